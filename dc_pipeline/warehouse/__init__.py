"""The warehouse: declared tables with their owners, numbered additive migrations, and the queries that
several stages share. Nothing here imports the Dagster shell."""
