"""The gifting service: the gift catalogue, the send saga over wallet and payout, the live feed."""
