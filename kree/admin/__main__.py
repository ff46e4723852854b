from kree.admin.cli import main

main()
