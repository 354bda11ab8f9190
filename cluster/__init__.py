"""Running beyond one machine: Ray cluster launcher configs, KubeRay RayService
and RayJob manifests, and a local multi-node cluster for development."""
