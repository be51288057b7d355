"""Every sentence a user reads, in one place, so Discord, Slack and the console say the same.

Functions return plain text (light Markdown that both platforms render: *bold*, `code`).
Keep them short, friendly and ending with what to do next.
"""

from __future__ import annotations


def credits_word(n: int) -> str:
    """`1 credit`, `5 credits`."""
    return f"{n} credit" if n == 1 else f"{n} credits"


# --- admission -----------------------------------------------------------------------------


def insufficient_credits(balance: int, cost: int) -> str:
    """The user cannot afford a job."""
    return (
        f"You need {credits_word(cost)} for this, but you have {credits_word(balance)}. "
        "Your daily allowance refills tomorrow, or ask a moderator for more."
    )


def frozen() -> str:
    """The user's credits are frozen."""
    return "Your credits are frozen by a moderator, so you can't start new jobs right now."


def banned() -> str:
    """The user is banned from generating here."""
    return "You're not allowed to generate images here. Ask a moderator if you think this is a mistake."


def budget_exhausted() -> str:
    """The tenant's budget is spent."""
    return "This server has used up its generation budget for today. Please try again tomorrow."


def blocked_prompt(word: str) -> str:
    """The prompt contains a blocklisted word."""
    return f"Your prompt contains a blocked word (“{word}”). Please rephrase it."


def not_moderator() -> str:
    """A moderator command from a member."""
    return "Only moderators can do that."


def busy(limit: int) -> str:
    """Per-user concurrency cap reached."""
    return (
        f"You already have {limit} job{'s' if limit != 1 else ''} running. "
        "Wait for one to finish, or cancel it."
    )


def queue_full() -> str:
    """The global queue is full."""
    return "The bot is very busy right now. Please try again in a minute."


def job_not_found(job_id: str) -> str:
    """No such job for this user."""
    return f"I can't find job `{job_id}`. Check the id, or start a new one."


def not_your_job() -> str:
    """Someone pressed a spending button on another member's result."""
    return "Only the person who started this job (or a moderator) can use that button."


def already_running() -> str:
    """A second click while the first job is still going."""
    return "That's already running. I'll post the result here when it's done."


# --- validation ----------------------------------------------------------------------------


def invalid(what: str, fix: str) -> str:
    """A parameter problem: what is wrong, then how to fix it."""
    return f"{what} {fix}"


def invalid_amount(amount: int, limit: int) -> str:
    """A moderator amount outside the allowed range."""
    return f"{amount} isn't a valid amount: use a whole number from 1 to {limit:,}."


# --- job lifecycle -------------------------------------------------------------------------


def queued(position: int) -> str:
    """Status text while waiting in the queue."""
    return "Queued — you're next." if position <= 1 else f"Queued — position {position} in line."


def submitted() -> str:
    """Status text once the vendor accepted the job."""
    return "Sent to the generator…"


def running(elapsed: float, percent: float | None) -> str:
    """Status text while the vendor works."""
    pct = f" {round(percent * 100)}%" if percent is not None else ""
    return f"Generating…{pct} ({int(elapsed)}s)"


def delivering() -> str:
    """Status text while downloading and posting files."""
    return "Almost there — fetching your files…"


def failed(reason: str) -> str:
    """Final failure text; credits are always released on failure."""
    return f"Sorry, that didn't work: {reason} You weren't charged."


def cancelled() -> str:
    """The job was cancelled by the user or a moderator."""
    return "Cancelled. You weren't charged."


def lost_after_restart() -> str:
    """A job that could not be re-attached after a restart."""
    return "I restarted and couldn't pick this job back up. You weren't charged — please try again."


# Reasons given inside `failed(...)`: short, no vendor internals.
REASON_VENDORS_DOWN = "all image services are unavailable right now."
REASON_TIMEOUT = "the generator took too long."
REASON_CONTENT = "the image service refused this prompt."
REASON_REJECTED = "the image service couldn't use this request."
REASON_VENDOR_FAILED = "the generator reported an error."
REASON_DOWNLOAD = "the result couldn't be downloaded."


__all__ = [name for name in dir() if not name.startswith("_") and name != "annotations"]
