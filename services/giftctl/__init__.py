"""giftctl: the command-line client of the giftcoin services (`python -m services.giftctl --help`)."""
