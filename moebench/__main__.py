from moebench.commands.app import main

main()
