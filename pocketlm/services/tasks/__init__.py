"""pocketlm task: routine work over a user's files."""
