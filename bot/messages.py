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


def too_late_to_cancel() -> str:
    """A Cancel that arrived after the job was finished and charged."""
    return "Too late — your result is on its way."


def database_busy() -> str:
    """The database stayed locked by another writer (an operator CLI, a backup)."""
    return "I'm busy for a moment — please try again in a few seconds. You weren't charged."


def lost_after_restart() -> str:
    """A job that could not be re-attached after a restart."""
    return "I restarted and couldn't pick this job back up. You weren't charged — please try again."


# --- results and views ---------------------------------------------------------------------


def result_caption(
    job_id: str, kind: str, prompt: str, size: tuple[int, int], seed: int | None, cost: int, images: int
) -> str:
    """The text under a delivered result."""
    what = {"image": "Image" if images <= 1 else f"{images} images", "edit": "Edit", "model3d": "3D model"}[
        kind
    ]
    short = prompt if len(prompt) <= 180 else prompt[:177] + "…"
    bits = [f"{size[0]}×{size[1]}"] if kind != "model3d" else []
    if seed is not None:
        bits.append(f"seed {seed}")
    bits.append(credits_word(cost))
    head = f"**{short}**\n" if short else ""
    return f"{head}{what} · {' · '.join(bits)} · job `{job_id}`"


def single_caption(job_id: str, index: int, prompt: str) -> str:
    """The text above one image of a multi-image result."""
    return f"Image {index + 1} of job `{job_id}`" + (f" — {prompt[:150]}" if prompt else "")


def not_finished(job_id: str, state: str) -> str:
    """/show on a job without a result."""
    return f"Job `{job_id}` has no result to show ({state})."


def not_cancellable(job_id: str, state: str) -> str:
    """/cancel on a finished job."""
    return f"Job `{job_id}` is already {state}; there's nothing to cancel."


def _when(ts: float) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def credits_view(
    balance: int, held: int, allowance: int, next_refill: float, frozen_: bool, recent: tuple[dict, ...]
) -> str:
    """/credits."""
    lines = [f"You have **{credits_word(balance)}**."]
    if held:
        lines.append(f"{credits_word(held)} are reserved for jobs still running.")
    if allowance:
        lines.append(
            f"Your daily allowance tops you up to {credits_word(allowance)}; next refill {_when(next_refill)}."
        )
    if frozen_:
        lines.append(frozen())
    if recent:
        lines.append("Recent jobs:")
        for job in recent:
            prompt = (job.get("prompt") or "")[:60]
            lines.append(
                f"• `{job['id']}` {job['kind']} — {job['state']} — {credits_word(job['cost'])} — {prompt}"
            )
    return "\n".join(lines)


def mod_balance(op: str, user: str, amount: int, balance: int) -> str:
    """After grant/take/set."""
    verb = {
        "grant": f"Granted {credits_word(amount)} to",
        "take": f"Took {credits_word(amount)} from",
        "set": "Set the balance of",
    }[op]
    return f"{verb} <@{user}>. Their balance is now {credits_word(balance)}."


def mod_flag(op: str, user: str) -> str:
    """After freeze/unfreeze/ban/unban."""
    return {
        "freeze": f"Froze the credits of <@{user}>.",
        "unfreeze": f"Unfroze the credits of <@{user}>.",
        "ban": f"Banned <@{user}> from generating here.",
        "unban": f"<@{user}> may generate again.",
    }[op]


def mod_allowance(amount: int) -> str:
    """After setting the daily allowance."""
    return f"Everyone's daily allowance is now {credits_word(amount)}."


def mod_cost(kind: str, amount: int) -> str:
    """After setting a cost."""
    unit = "per image" if kind == "image" else "per job"
    return f"{kind} now costs {credits_word(amount)} {unit}."


def mod_budget(amount: int | None) -> str:
    """After setting or clearing the server budget."""
    return (
        "The server has no daily budget now."
        if amount is None
        else (f"The server's daily budget is now {credits_word(amount)}.")
    )


def blocklist_view(words: list[str] | tuple[str, ...]) -> str:
    """/quota blocklist list."""
    return "The blocklist is empty." if not words else "Blocked words: " + ", ".join(f"`{w}`" for w in words)


def mod_blocklist(added: bool, words: list[str], now: list[str] | tuple[str, ...]) -> str:
    """After blocklist add/remove."""
    verb = "Added" if added else "Removed"
    return f"{verb} {', '.join(f'`{w}`' for w in words)}. " + blocklist_view(now)


def history_view(user: str, entries: list) -> str:
    """/quota history @user."""
    if not entries:
        return f"<@{user}> has no credit history yet."
    lines = [f"Credit history of <@{user}> (newest first):"]
    for e in entries:
        delta = f"{e.delta:+d}" if e.delta else "±0"
        why = f" — {e.reason}" if e.reason else ""
        by = f" by {e.actor}" if e.actor else ""
        lines.append(f"• {_when(e.ts)} {e.kind} {delta} → {e.balance_after}{by}{why}")
    return "\n".join(lines)


def top_view(rows: list) -> str:
    """/quota top."""
    if not rows:
        return "Nobody has spent credits yet."
    return "Top spenders:\n" + "\n".join(
        f"{i}. <@{user}> — {credits_word(spent)}" for i, (user, spent) in enumerate(rows, 1)
    )


def spend_view(rows: list[tuple[str, int, float]]) -> str:
    """Vendor spend per tenant (operator and moderators)."""
    if not rows:
        return "No finished jobs yet."
    return "\n".join(f"{tenant}: {n} jobs, ${usd:.2f} at the vendors" for tenant, n, usd in rows)


def mod_log_line(actor: str, op: str, target: str | None, command: object, reason: str) -> str:
    """One line for the moderation-log channel."""
    amount = getattr(command, "amount", None)
    bits = [f"{actor} ran `{op}`"]
    if target:
        bits.append(f"on <@{target}>")
    if amount is not None:
        bits.append(f"({amount})")
    if getattr(command, "kind", None):
        bits.append(f"for {command.kind}")  # type: ignore[attr-defined]
    if getattr(command, "words", None):
        bits.append(f"words: {command.words}")  # type: ignore[attr-defined]
    if reason:
        bits.append(f"— {reason}")
    return " ".join(bits)


# --- media (input images for /edit and /model3d) ------------------------------------------


def _mb(limit_bytes: int) -> str:
    return f"{limit_bytes / (1024 * 1024):.3g}"


def no_image() -> str:
    """/edit or /model3d without any input image."""
    return "Please attach an image (PNG, JPEG or WebP) or paste a link to one."


def not_an_image(label: str) -> str:
    """The input is not a PNG, JPEG or WebP picture (a text file, a login page…)."""
    return (
        f"“{label}” isn't an image I can use. Please attach a PNG, JPEG or WebP picture "
        "(for a Slack file, make sure the bot can see it)."
    )


def image_too_big(limit_bytes: int) -> str:
    """The input image is over the size cap."""
    return f"That image is too big: the limit is {_mb(limit_bytes)} MB. Please send a smaller version."


def image_too_many_pixels(limit_pixels: int) -> str:
    """The input image's dimensions are beyond what the bot decodes."""
    return (
        f"That image has too many pixels (over {limit_pixels // 1_000_000} megapixels). "
        "Please send a smaller version."
    )


def image_unreachable(label: str) -> str:
    """The input URL could not be downloaded."""
    return (
        f"I couldn't download {label}. Check that the link works and is public, or attach the image instead."
    )


def image_unreadable(label: str) -> str:
    """A local input file could not be read."""
    return f"I couldn't read {label}. Check the path, or attach the image instead."


def image_private_address(host: str) -> str:
    """The input URL points at a private, loopback or otherwise non-public address."""
    return (
        f"For safety I only fetch images from public internet addresses, and {host} isn't one. "
        "Please attach the image instead."
    )


def image_unsupported_scheme(scheme: str) -> str:
    """The input URL is not http(s)."""
    shown = f"{scheme}://" if scheme else "that kind of"
    return f"I can only fetch images from http:// or https:// links, not {shown} links. Please attach the image instead."


# --- platform notes ------------------------------------------------------------------------


def something_went_wrong() -> str:
    """An unexpected error while handling a command (the details go to the log, not the user)."""
    return "Something went wrong on my side; the details are in the log. Please try again."


def slack_cannot_post_here() -> str:
    """Slack: the bot is not in the channel the command came from."""
    return (
        "I can't post in this channel, so I'll send this to you in a direct message. "
        "Invite me with `/invite @imagine-bot` to get results here."
    )


def discord_sent_by_dm(channel_id: str) -> str:
    """Discord: the first line of a job message that came by DM because the channel refused it."""
    return f"I can't post in <#{channel_id}>, so this comes to you by direct message."


def file_too_big(filename: str, size: str) -> str:
    """A result file over the platform's attachment limit, with no link to offer instead."""
    return f"{filename} ({size}) is too big to attach here; ask an operator to set PUBLIC_BASE_URL for links."


def unknown_command() -> str:
    """A slash command the bot has no handler for."""
    return invalid("I don't know that command.", "Try `/imagine help`.")


# --- the edit dialog (the Edit button's modal, on both platforms) ------------------------------


def edit_dialog_title() -> str:
    """Title of the modal that asks for an edit instruction (Slack allows 24 characters)."""
    return "Edit this image"


def edit_dialog_label() -> str:
    """Label of the modal's instruction field."""
    return "What should change?"


def edit_dialog_placeholder() -> str:
    """Example shown in the empty instruction field."""
    return "e.g. make it night time, add snow"


def edit_dialog_submit() -> str:
    """The modal's submit button (Slack)."""
    return "Edit"


def edit_dialog_close() -> str:
    """The modal's close button (Slack)."""
    return "Cancel"


def edit_instruction_missing() -> str:
    """The edit modal was submitted without an instruction."""
    return "Say what should change."


def edit_file_subject(filename: str | None) -> str:
    """Names the chat file an edit modal works on."""
    return f"Editing **{filename or 'image'}**"


# --- what a job was started for (first line of its status message) ---------------------------


def button_request(action: str, job_id: str) -> str:
    """A job started or shown by a result button (`action` is a `ButtonAction` value)."""
    name = {"reroll": "Reroll", "make3d": "Make 3D", "single": "Image", "cancel": "Cancel", "edit": "Edit"}
    return f"{name.get(action, action)} · job `{job_id}`"


def edit_request(instruction: str, *, job_id: str | None = None, filename: str | None = None) -> str:
    """An edit started from the edit modal: of a job's image, or of a chat file."""
    subject = f"job `{job_id}`" if job_id else (filename or "an image")
    return f"Edit of {subject}: {instruction}"


# --- help ----------------------------------------------------------------------------------


def slack_help(flags_help: str) -> str:
    """`/imagine help` on Slack; `flags_help` is the core's inline-flag summary."""
    return (
        "**imagine-bot** makes images and 3D models with Hunyuan.\n"
        "• `/imagine <prompt>` — images, e.g. `/imagine a red fox --ar 16:9 --seed 7 --no text --n 4`\n"
        "• `/edit <image link> <instruction>` — change an image; or press **Edit** on a result, or use "
        "the message shortcut **Edit this image** on any message with an image\n"
        "• `/model3d <prompt>` or `/model3d <image link>` — a 3D model (.glb); or press **Make 3D** on a "
        "result\n"
        "• `/credits` — your balance and recent jobs\n"
        "• `/quota …` — moderators: grant, take, set, freeze, ban, allowance, cost, budget, blocklist, "
        "history, top\n" + flags_help
    )


def console_help(flags_help: str) -> str:
    """`/help` in the terminal chat; `flags_help` is the core's inline-flag summary."""
    return (
        "Commands:\n"
        "  /imagine <prompt> [--ar W:H] [--seed N] [--no words] [--n 1-4] [--model NAME] [--size WxH]\n"
        "  /edit <image path or URL> <instruction>\n"
        "  /model3d <prompt>   or   /model3d <image path or URL>\n"
        "  /credits   /show <job id>   /cancel <job id>   /quota …   /help   /quit\n" + flags_help
    )


def console_welcome() -> str:
    """First line of an interactive terminal chat."""
    return "imagine-bot console — type /help. Files are saved under the output folder."


def console_next(job_id: str) -> str:
    """After a result in the terminal chat: how to get it again."""
    return f"next: /imagine … again, or /show {job_id}"


def no_finished_image() -> str:
    """A button that needs a finished image on a job that has none."""
    return "That job has no finished image to work from yet."


def image_index_out_of_range(count: int) -> str:
    """A button or command naming an image the job does not have."""
    return f"That job has {count} image{'s' if count != 1 else ''}; pick 1 to {count}."


def not_configured(what: str) -> str:
    """A command kind no configured vendor serves (e.g. "Image editing")."""
    return f"{what} isn't configured on this bot."


# Reasons given inside `failed(...)`: short, no vendor internals.
REASON_VENDORS_DOWN = "all image services are unavailable right now."
REASON_TIMEOUT = "the generator took too long."
REASON_CONTENT = "the image service refused this prompt."
REASON_REJECTED = "the image service couldn't use this request."
REASON_VENDOR_FAILED = "the generator reported an error."
REASON_DOWNLOAD = "the result couldn't be downloaded."


__all__ = [name for name in dir() if not name.startswith("_") and name != "annotations"]
