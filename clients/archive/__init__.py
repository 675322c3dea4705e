"""Archive mode of ``emotion-client recognize``: many recordings (files, folders, globs, lists, object-store
URLs) to one resumable summary table (``schema.py`` documents its columns and files)."""
