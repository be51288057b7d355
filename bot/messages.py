"""Every sentence a user reads, in one place, so Discord, Slack and the console say the same.

Functions return plain text (light Markdown that both platforms render: *bold*, `code`).
Keep them short, friendly and ending with what to do next.
"""

from __future__ import annotations

import re as _re

#: Marks a mention the core itself wrote (a word joiner: invisible on every platform). Slack
#: renders marked mentions and escapes every other `<`, `>` and `&`, so a prompt or reason
#: echoed back can never ping anyone; user text is stripped of this character at the boundary
#: (`bot.commands.clean_text`), so it cannot forge one.
MENTION_MARK = "\u2060"


def mention(user_id: str) -> str:
    """A mention of a member, written by the core (e.g. a moderator's answer)."""
    return f"{MENTION_MARK}<@{user_id}>"


def channel_mention(channel_id: str) -> str:
    """A link to a channel, written by the core."""
    return f"{MENTION_MARK}<#{channel_id}>"


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


def budget_exhausted(budget: int | None = None, resets_at: float | None = None) -> str:
    """The tenant's daily budget is spent: the cap and when it resets, when known."""
    cap = f" of {credits_word(budget)}" if budget is not None else ""
    when = f" It resets {_when(resets_at)}." if resets_at is not None else " It resets at midnight UTC."
    return f"This server has used up its daily generation budget{cap}.{when}"


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


def not_yours_to_delete() -> str:
    """Someone pressed Delete on another member's result."""
    return "Only the person who asked for this result (or a moderator) can delete it."


def job_choice(job_id: str, kind: str, state: str, prompt: str) -> str:
    """One suggestion in the job-id autocomplete of /show and /cancel (at most 100 characters)."""
    label = f"{job_id} · {kind} · {state}" + (f" · {' '.join(prompt.split())}" if prompt.strip() else "")
    return label if len(label) <= 100 else label[:99] + "…"


def already_running() -> str:
    """A second click while the first job is still going."""
    return "That's already running. I'll post the result here when it's done."


# --- expensive jobs ask first (bot/confirm.py) -----------------------------------------------


def confirm_prompt(
    cost: int, balance: int, threshold: int, request_id: str, platform: str, *, minutes: int = 10
) -> str:
    """A request above the server's threshold: its cost, the balance, and how to go on."""
    text = (
        f"This will cost **{credits_word(cost)}** (you have {credits_word(balance)}). This server asks "
        f"before jobs over {credits_word(threshold)}; nothing is held until you confirm. "
        f"The offer stands for {minutes} minutes."
    )
    if platform in _TERMINALS:
        return text + f" Type `/confirm {request_id}` to start it, or `/cancel {request_id}`."
    return text + " Press **Confirm** to start it, or **Cancel**."


def confirm_button() -> str:
    """The label of the button that starts a confirmed request."""
    return "Confirm"


def confirm_cancel_button() -> str:
    """The label of the button that drops a request waiting for Confirm."""
    return "Cancel"


def confirm_declined() -> str:
    """Cancel on a request that waited for Confirm."""
    return "Cancelled. Nothing was charged."


def confirm_expired() -> str:
    """Confirm (or Cancel) after the request's offer ran out."""
    return "This request expired before it was confirmed; nothing was charged. Run the command again to start it."


def confirm_not_yours() -> str:
    """Someone else pressed Confirm or Cancel on a member's request."""
    return "Only the person who asked for this job can confirm or cancel it."


def confirm_already_waiting() -> str:
    """A second click on a result button while the first one's cost still waits for Confirm."""
    return "That's already waiting for your confirmation: press Confirm on the message above."


def confirm_waiting() -> str:
    """The state shown for a request waiting for Confirm (e.g. in the /cancel autocomplete)."""
    return "waiting for confirmation"


def confirm_nothing_waiting() -> str:
    """A bare `/confirm` with nothing waiting."""
    return "Nothing is waiting for your confirmation."


def mod_confirm_above(amount: int | None) -> str:
    """After setting or turning off the confirmation threshold."""
    if amount is None:
        return "Jobs start without asking now, whatever they cost."
    return f"Jobs over {credits_word(amount)} now ask their requester to confirm the cost first."


def settings_view(
    allowance: int,
    budget: int | None,
    budget_used: int,
    costs: dict[str, int],
    blocked: int,
    confirm_above: int | None,
) -> str:
    """/quota settings: the server's ledger settings in one view."""
    prices = ", ".join(f"{kind} {credits_word(n)}" for kind, n in costs.items())
    lines = [
        "**Server settings**",
        f"Daily allowance: {credits_word(allowance)} per member",
        f"Daily budget: {credits_word(budget)} ({credits_word(budget_used)} used today)"
        if budget is not None
        else "Daily budget: none",
        f"Costs: {prices}",
        f"Ask before jobs over: {credits_word(confirm_above)}"
        if confirm_above is not None
        else "Ask before jobs over: off",
        f"Blocked words: {blocked}",
    ]
    return "\n".join(lines)


# --- validation ----------------------------------------------------------------------------


def invalid(what: str, fix: str) -> str:
    """A parameter problem: what is wrong, then how to fix it."""
    return f"{what} {fix}"


def unreadable_characters() -> str:
    """Text with broken characters (lone UTF-16 surrogates) that cannot be stored or sent."""
    return (
        "Your text contains broken characters I can't read (often a half-copied emoji). "
        "Please retype it without them."
    )


def prompt_length_refused(what: str, length: int, minimum: int, maximum: int) -> str:
    """No configured model takes a prompt (or instruction) of this length."""
    if length < minimum:
        chars = "character" if length == 1 else "characters"
        return f"Your {what} is {length} {chars} long; the models here need at least {minimum}. Please say a little more."
    return f"Your {what} is {length:,} characters long; the models here take at most {maximum:,}. Please shorten it."


def no_model_takes(what: str) -> str:
    """No configured model can take this combination of options."""
    return f"No model here can make {what} with these options. Try fewer images or another `--model`."


def flag_repeated(name: str) -> str:
    """The same inline flag twice (`--seed 1 --seed 2`): which one was meant is a guess."""
    return invalid(f"`--{name}` is given more than once.", "Keep just one.")


def flags_conflict(first: str, second: str) -> str:
    """Two inline flags that set the same thing (`--ar` and `--size` both set the shape)."""
    return invalid(
        f"`--{first}` and `--{second}` both set the image's shape.",
        "Use one: `--ar 16:9` for a ratio, or `--size 1024x576` for exact pixels.",
    )


def not_a_command(text: str) -> str:
    """A typed line without a slash: a hint, never a paid job."""
    short = " ".join(text.split())
    short = short if len(short) <= 60 else short[:59] + "…"
    return f"Commands start with a slash: `/imagine {short}` makes an image of that; `/help` lists the rest."


def invalid_amount(amount: int, limit: int) -> str:
    """A moderator amount outside the allowed range."""
    return f"{amount} isn't a valid amount: use a whole number from 1 to {limit:,}."


# --- job lifecycle -------------------------------------------------------------------------


def ordinal(n: int) -> str:
    """`1st`, `2nd`, `3rd`, `4th`, `11th`, `12th`, `13th`, `21st`…"""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _held(cost: int) -> str:
    return f" · {credits_word(cost)} held" if cost > 0 else ""


def queued(position: int, cost: int = 0) -> str:
    """Status text while waiting in the queue: the true place in line and the credits held."""
    place = f"{ordinal(position)} in line" if position > 0 else "waiting for a free worker"
    return f"Queued — {place}{_held(cost)}."


def submitted(cost: int = 0) -> str:
    """Status text once the vendor accepted the job."""
    return f"Sent to the generator…{_held(cost)}"


def running(elapsed: float, percent: float | None, usual: float | None = None, cost: int = 0) -> str:
    """Status text while the vendor works: elapsed, the vendor's percent, the route's usual time."""
    pct = f" {round(percent * 100)}%" if percent is not None else ""
    estimate = f", usually ~{max(1, round(usual))} s" if usual is not None else ""
    return f"Generating…{pct} ({int(elapsed)} s{estimate}){_held(cost)}"


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
    job_id: str,
    kind: str,
    prompt: str,
    size: tuple[int, int],
    seed: int | None,
    cost: int,
    images: int,
    faces: int | None = None,
) -> str:
    """The text under a delivered result (a 3D model's face count when known)."""
    what = {"image": "Image" if images <= 1 else f"{images} images", "edit": "Edit", "model3d": "3D model"}[
        kind
    ]
    short = prompt if len(prompt) <= 180 else prompt[:177] + "…"
    bits = [f"{size[0]}×{size[1]}"] if kind != "model3d" else []
    if kind == "model3d" and faces is not None:
        bits.append(faces_word(faces))
    if seed is not None:
        bits.append(f"seed {seed}")
    bits.append(credits_word(cost))
    head = f"**{short}**\n" if short else ""
    return f"{head}{what} · {' · '.join(bits)} · job `{job_id}`"


def faces_word(n: int) -> str:
    """`1 face`, `12,480 faces`: a 3D model's size."""
    return f"{n:,} face" if n == 1 else f"{n:,} faces"


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
    balance: int,
    held: int,
    allowance: int,
    next_refill: float,
    frozen_: bool,
    recent: tuple[dict, ...],
    banned_: bool = False,
) -> str:
    """/credits: balance, holds, refill, freeze and ban, and what each recent job cost."""
    lines = [f"You have **{credits_word(balance)}**."]
    if held:
        lines.append(f"{credits_word(held)} are reserved for jobs still running.")
    if allowance:
        lines.append(
            f"Your daily allowance tops you up to {credits_word(allowance)}; next refill {_when(next_refill)}."
        )
    if frozen_:
        lines.append(frozen())
    if banned_:
        lines.append(banned())
    if recent:
        lines.append("Recent jobs:")
        for job in recent:
            prompt = (job.get("prompt") or "")[:60]
            lines.append(
                f"• `{job['id']}` {job['kind']} — {_job_charge(job['state'], job['cost'])} — {prompt}"
            )
    return "\n".join(lines)


def _job_charge(state: str, cost: int) -> str:
    # What the job did to the member's credits, in words: a refunded job cost nothing.
    if state == "done":
        return f"done, charged {credits_word(cost)}"
    if state in ("failed", "cancelled"):
        return f"{state}, refunded"
    return f"{state}, {credits_word(cost)} held"


def mod_balance(op: str, user: str, amount: int, balance: int) -> str:
    """After grant/take/set."""
    verb = {
        "grant": f"Granted {credits_word(amount)} to",
        "take": f"Took {credits_word(amount)} from",
        "set": "Set the balance of",
    }[op]
    return f"{verb} {mention(user)}. Their balance is now {credits_word(balance)}."


def mod_flag(op: str, user: str) -> str:
    """After freeze/unfreeze/ban/unban."""
    return {
        "freeze": f"Froze the credits of {mention(user)}.",
        "unfreeze": f"Unfroze the credits of {mention(user)}.",
        "ban": f"Banned {mention(user)} from generating here.",
        "unban": f"{mention(user)} may generate again.",
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


#: How ledger entry kinds read in a member's history.
_ENTRY_WORDS = {
    "hold": "job",
    "release": "refund",
    "allowance": "daily allowance",
}


def history_view(user: str, entries: list) -> str:
    """/quota history @user: each change with its job id; settles (which move nothing) left out."""
    shown = [e for e in entries if not (e.kind == "settle" and not e.delta)]
    if not shown:
        return f"{mention(user)} has no credit history yet."
    lines = [f"Credit history of {mention(user)} (newest first):"]
    for e in shown:
        delta = f"{e.delta:+d}" if e.delta else "±0"
        what = _ENTRY_WORDS.get(e.kind, e.kind)
        job = f" `{e.job_id}`" if e.job_id else ""
        why = f" — {e.reason}" if e.reason and e.kind not in ("hold",) else ""
        by = f" by {e.actor}" if e.actor else ""
        lines.append(f"• {_when(e.ts)} {what}{job} {delta} → {e.balance_after}{by}{why}")
    return "\n".join(lines)


def top_view(rows: list) -> str:
    """/quota top."""
    if not rows:
        return "Nobody has spent credits yet."
    return "Top spenders:\n" + "\n".join(
        f"{i}. {mention(user)} — {credits_word(spent)}" for i, (user, spent) in enumerate(rows, 1)
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
        bits.append(f"on {mention(target)}")
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


def not_an_image(label: str, *, chat_file: bool = False) -> str:
    """The input is not a PNG, JPEG or WebP picture (a text file, a login page…).

    `chat_file`: it was a private file shared in chat, which the bot gets as a login page when
    it cannot see the file.
    """
    hint = " If it's a file shared in chat, make sure the bot can see it." if chat_file else ""
    return f"“{label}” isn't an image I can use. Please use a PNG, JPEG or WebP picture.{hint}"


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


def local_path_refused() -> str:
    """A chat member named a file on the bot's disk; the same words whether it exists or not."""
    return (
        "I can only use images you attach or link to (http:// or https://), not file paths. "
        "Please attach the image instead."
    )


def image_unreadable(label: str) -> str:
    """A local input file (a path typed in the console) could not be read."""
    return f"I couldn't read {label}. Check the path."


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
    return f"I can't post in {channel_mention(channel_id)}, so this comes to you by direct message."


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


def edit_dialog_expired() -> str:
    """An edit dialog submitted after the bot forgot which image it was for (a restart)."""
    return "That edit dialog has expired. Please open it again on the message."


def discord_edit_menu() -> str:
    """Discord: the message context menu that edits a message's image (32 characters at most)."""
    return "Edit image"


def discord_model3d_menu() -> str:
    """Discord: the message context menu that turns a message's image into a 3D model."""
    return "Make 3D model"


def no_image_in_message() -> str:
    """A context menu (or shortcut) on a message that carries no usable image."""
    return "That message has no image I can use. Pick one with an attached picture or an image link."


def edit_file_subject(filename: str | None) -> str:
    """Names the chat file an edit modal works on."""
    return f"Editing **{filename or 'image'}**"


# --- what a job was started for (first line of its status message) ---------------------------


def button_request(action: str, job_id: str) -> str:
    """A job started or shown by a result button (`action` is a `ButtonAction` value)."""
    name = {
        "reroll": "Reroll",
        "make3d": "Make 3D",
        "single": "Image",
        "cancel": "Cancel",
        "edit": "Edit",
        "vary": "Variation",
    }
    return f"{name.get(action, action)} · job `{job_id}`"


def variation_instruction(prompt: str, limit: int | None = None) -> str:
    """The edit instruction a Vary / V1…V4 button sends with the chosen image: the original
    prompt, framed so the instruction-edit route keeps the subject and changes the details.
    Cut to the edit route's instruction limit (`limit`), since a prompt may be longer."""
    text = f"a variation of: {prompt}"
    return text if limit is None or len(text) <= limit else text[: max(1, limit - 1)] + "…"


def vary_label(index: int | None) -> str:
    """A variation button: V1…V4 under a grid, Vary under a single image."""
    return "Vary" if index is None else f"V{index + 1}"


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
        "• `/quota …` — moderators: grant, take, set, freeze, ban, allowance, cost, budget, "
        "confirm-above, settings, blocklist, history, top\n" + flags_help
    )


# Discord's slash-command and option descriptions (at most 100 characters each), by command
# path ("quota blocklist add"); the console and Slack explain the same commands in their help.
_MEMBER_REASON = "Why (shown in the moderation log)"
_COMMANDS: dict[str, tuple[str, dict[str, str]]] = {
    "imagine": (
        "Create images from a text prompt (Hunyuan Image 3)",
        {
            "prompt": "What to draw; inline --ar 16:9 --seed 7 --no text --n 4 work too",
            "aspect": "Aspect ratio",
            "seed": "Seed, to repeat a result",
            "negative": "Things to leave out",
            "count": "How many images",
            "model": "Model or vendor",
        },
    ),
    "edit": (
        "Change an image by instruction",
        {
            "image": "The image to change",
            "instruction": "What should change",
            "seed": "Seed, to repeat a result",
            "model": "Model or vendor",
        },
    ),
    "model3d": (
        "Make a 3D model (.glb) from a prompt or an image",
        {
            "prompt": "What to model (or attach an image instead)",
            "image": "An image to turn into 3D",
            "face_count": "Mesh detail: 40,000 to 1,500,000 faces",
            "geometry_only": "Skip textures (faster)",
            "model": "Model or vendor",
        },
    ),
    "credits": ("Your credits, daily allowance and recent jobs", {}),
    "show": (
        "Post a finished job's result again, with its buttons",
        {"job_id": "The job id from the result's caption (pick one of your recent jobs)"},
    ),
    "cancel": (
        "Cancel a job that is still running (you are not charged)",
        {"job_id": "The job id from its status message (pick one of your running jobs)"},
    ),
    "quota": ("Manage members' credits (moderators)", {}),
    "quota grant": (
        "Give a member credits",
        {
            "member": "The member who gets the credits",
            "amount": "How many credits to give",
            "reason": _MEMBER_REASON,
        },
    ),
    "quota take": (
        "Take credits from a member",
        {
            "member": "The member to take credits from",
            "amount": "How many credits to take",
            "reason": _MEMBER_REASON,
        },
    ),
    "quota set": (
        "Set a member's balance",
        {
            "member": "The member whose balance to set",
            "amount": "Their new balance, in credits",
            "reason": _MEMBER_REASON,
        },
    ),
    "quota freeze": (
        "Freeze a member's credits",
        {"member": "The member whose credits to freeze", "reason": _MEMBER_REASON},
    ),
    "quota unfreeze": (
        "Unfreeze a member's credits",
        {"member": "The member whose credits to unfreeze", "reason": _MEMBER_REASON},
    ),
    "quota ban": (
        "Stop a member from generating here",
        {"member": "The member to stop from generating", "reason": _MEMBER_REASON},
    ),
    "quota unban": (
        "Let a banned member generate again",
        {"member": "The member who may generate again", "reason": _MEMBER_REASON},
    ),
    "quota allowance": (
        "Daily credits every member gets",
        {"amount": "Credits each member is topped up to every day (0: no daily top-up)"},
    ),
    "quota cost": (
        "Credits a command kind costs",
        {"kind": "Which command", "amount": "Credits it costs (per image for image)"},
    ),
    "quota budget": (
        "Server-wide daily credit cap (0 removes it)",
        {"amount": "Credits the whole server may spend per day (0 removes the cap)"},
    ),
    "quota confirm-above": (
        "Ask members to confirm jobs that cost more than this (0 turns it off)",
        {"amount": "Credits above which a job waits for Confirm (0: never ask)"},
    ),
    "quota settings": ("The server's allowance, budget, costs and confirmation threshold", {}),
    "quota history": ("A member's credit history", {"member": "The member whose history to show"}),
    "quota top": ("Who spent the most credits", {}),
    "quota spend": ("What generation cost at the vendors", {}),
    "quota blocklist": ("Words refused in prompts", {}),
    "quota blocklist add": (
        "Refuse prompts with these words",
        {"words": "Words to refuse, separated by spaces or commas"},
    ),
    "quota blocklist remove": (
        "Allow these words again",
        {"words": "Words to allow again, separated by spaces or commas"},
    ),
    "quota blocklist list": ("Show the blocked words", {}),
}


def command_description(path: str) -> str:
    """A slash command's one-line description (`path` like "quota grant")."""
    return _COMMANDS[path][0]


def option_descriptions(path: str) -> dict[str, str]:
    """Descriptions of a slash command's options, by option name."""
    return dict(_COMMANDS[path][1])


def console_help(flags_help: str) -> str:
    """`/help` in the terminal chat; `flags_help` is the core's inline-flag summary."""
    return (
        "Commands:\n"
        "  /imagine <prompt> [--ar W:H] [--seed N] [--no words] [--n 1-4] [--model NAME] [--size WxH]\n"
        "  /edit <image path or URL> <instruction>\n"
        "  /model3d <prompt>   or   /model3d <image path or URL>\n"
        "  /credits   /show <job id>   /cancel <job id>   /confirm [request id]   /quota …   /help   /quit\n"
        + flags_help
    )


def console_welcome() -> str:
    """First line of an interactive terminal chat."""
    return "imagine-bot console — type /help. Files are saved under the output folder."


def console_next(job_id: str, image: str | None, *, edit: bool, make3d: bool) -> str:
    """After a result in the terminal chat: the typed form of the result's buttons."""
    steps = []
    if image and edit:
        steps.append(f"/edit {image} <what to change>")
    if image and make3d:
        steps.append(f"/model3d {image}")
    steps.append(f"/show {job_id}")
    return "next: " + "  or  ".join(steps)


def console_stopped(running: int, platform: str) -> str:
    """The terminal chat (or a one-off CLI job) was interrupted with jobs still running."""
    if not running:
        return "Stopped."
    jobs = "1 job is still running" if running == 1 else f"{running} jobs are still running"
    if platform == "cli":
        return f"Stopped. {jobs}; `imagine-bot jobs resume` finishes {'it' if running == 1 else 'them'}."
    return (
        f"Stopped. {jobs}; {'it' if running == 1 else 'they'} will resume the next time you start the demo."
    )


def moderator_top_up(platform: str, user: str, tenant: str, amount: int) -> str:
    """After `insufficient_credits`, for a moderator: how to grant themselves more."""
    if platform == "cli":
        how = f"`imagine-bot credits grant {user} {amount} --tenant {tenant}`"
    else:
        how = f"`/quota grant {mention(user)} {amount}`"
    return f"As a moderator you can grant yourself more: {how}."


_TERMINALS = frozenset({"console", "cli"})
# Only the mentions the core wrote (marked): a prompt's own `<@x>` is the user's text.
_CORE_MENTION = _re.compile(MENTION_MARK + r"<([@#])([^>|\s]+)(?:\|[^>]*)?>")


def for_platform(text: str, platform: str) -> str:
    """Shared wording as `platform` shows it: a terminal has no mentions or bold (`<@ann>` is `ann`)."""
    if platform not in _TERMINALS:
        return text
    plain = _CORE_MENTION.sub(lambda m: m.group(2) if m.group(1) == "@" else f"#{m.group(2)}", text)
    return plain.replace("**", "")


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
