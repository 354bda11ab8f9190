"""Ray Serve's throughput settings, in one place for every way fmtrade starts Ray.

Those ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` turns on, minus direct ingress (which opens an extra
HTTP port on every replica): gRPC between replicas, user code and router on the replica's event
loop, buffered request logs. Measured against Ray's defaults on the 2-core VM (docs/BENCHMARKS.md,
tiny model, 64 clients): ~30% less machine CPU per request with batching on, ~40% off. Ray reads
them when its Serve processes start, so they belong in the environment of every Ray node:
``serve.runner.start_local_ray`` sets them for the Ray it embeds, the KubeRay RayService
(``cluster/kuberay.py``) in its pods, ``cluster/aws.yaml`` on its ``ray start`` lines.
"""

FAST_PATH_ENV = {
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_LOG_TO_STDERR": "0",
}
