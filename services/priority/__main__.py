from priority.app import main

main()
