"""Who belongs to a federation (the signed roster) and what its members learn together."""
