from kree.engine.cli import main

main()
