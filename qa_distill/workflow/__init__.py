"""`main`: a recipe's whole chain, planned and checked first (`plan`), then run as child runs of one
MLflow parent run that reuse what is done (`steps`)."""
