"""Pure placement logic: frame masks and striping strategies."""
