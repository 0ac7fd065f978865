from lightning_bet.cli import main

main()
