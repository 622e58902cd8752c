from dlsim.cli import main

main()
