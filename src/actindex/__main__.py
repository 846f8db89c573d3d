from actindex.cli import main

main()
