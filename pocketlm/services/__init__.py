"""Services: what pocketlm does (generate, chat, fit...), independent of any interface."""
