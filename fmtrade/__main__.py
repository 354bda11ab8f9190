from fmtrade.cli import main

main()
