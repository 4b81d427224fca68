"""Small example edit files shipped with mkedit (the demo's counterfactual facts)."""
