from kree.cwl.cli import main

main()
