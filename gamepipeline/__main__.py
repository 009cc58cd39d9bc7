from gamepipeline.cli import main

main()
