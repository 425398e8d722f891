"""The owner's KPI dashboard: the KPI queries, the plots, the page and its Voila server."""
