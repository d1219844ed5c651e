"""Online convex optimization: SEA loss streams, regret bookkeeping, optimistic OMD."""
