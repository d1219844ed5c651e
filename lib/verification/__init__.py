"""Neural-network verification: bound propagation and certified local Lipschitz constants."""
