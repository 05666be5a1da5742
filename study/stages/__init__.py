"""The stages of a study: ``train`` (one run), ``tune`` (a search), ``ensemble`` (votes against
baselines) and ``sweep`` (a grid over seeds). Each owns its run, its results type (written and
read back by it alone), its tables, figures and report section."""
