"""The results: the trained model scored on the test split against the truth, beside the methods in use today."""
