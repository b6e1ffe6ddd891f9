"""What members learn together: the routing records each node keeps, the policy
artifact, the optimiser, the Flower ClientApp and ServerApp, the run settings, and the
coordinator's run. Records never leave an organization; only weights and aggregates do."""
