from mmbee.cli import main

main()
