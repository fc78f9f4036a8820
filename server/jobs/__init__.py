"""Async jobs (`Prefer: respond-async`): their records' life, and webhooks."""
