"""Neural-network building blocks: binary layers and estimators, small training loops, Hessians."""
