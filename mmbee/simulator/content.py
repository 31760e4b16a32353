"""What the simulated live streams show: categories, moment states, text templates, frame latents.

Everything here is a fixed constant of the simulator (independent of a world's seed), so two
worlds share one content vocabulary: a model trained on one world reads another's content the
same way. The moment state of a stream (PK battle, lucky draw, ...) moves gift propensity and is
visible through exactly one modality per category (`SIGNAL_MODALITY`); the other two modalities
of that category depend only on category and streamer style.

Example:
    >>> SIGNAL_MODALITY["game"]
    'comments'
    >>> expand_frame_latents(np.zeros((2, LATENT_DIM), np.float32)).shape
    (2, 1280)
"""

from __future__ import annotations

from typing import Final

import numpy as np

from mmbee.schemas.types import FRAME_DIM

__all__ = [
    "CATEGORIES",
    "CATEGORY_SHARE",
    "MOMENTS",
    "SPECIAL_MOMENTS",
    "GIFT_MULTIPLIER",
    "SPECIAL_MOMENT_MIX",
    "SIGNAL_MODALITY",
    "MODALITY_CATEGORIES",
    "LATENT_DIM",
    "STYLE_DIM",
    "N_STYLE_CLUSTERS",
    "FRAME_PROJECTION_SEED",
    "CONTENT_SEED",
    "TextCatalogue",
    "text_catalogue",
    "frame_tables",
    "frame_projection",
    "expand_frame_latents",
    "quantize_latents",
    "dequantize_latents",
    "LATENT_SCALE",
]

CATEGORIES: Final = (
    "game",
    "music",
    "dance",
    "chat",
    "outdoor",
    "cooking",
    "shopping",
    "education",
)
"""Live content categories (room.csv `live_content_category`)."""

CATEGORY_SHARE: Final = np.array([0.16, 0.14, 0.12, 0.18, 0.10, 0.08, 0.12, 0.10])
"""Share of streamers in each category, in `CATEGORIES` order."""

MOMENTS: Final = ("normal", "pk_battle", "song_request", "lucky_draw", "thank_you", "break")
"""Moment states of a live stream; index 0 is the ordinary state."""
SPECIAL_MOMENTS: Final = MOMENTS[1:]

GIFT_MULTIPLIER: Final = np.array([1.0, 6.0, 3.0, 4.0, 2.5, 0.15])
"""Factor on a viewer's gift rate while the stream is in each moment (MOMENTS order)."""

SPECIAL_MOMENT_MIX: Final = np.array(
    [
        # pk_battle song_request lucky_draw thank_you break
        [0.35, 0.00, 0.30, 0.20, 0.15],  # game
        [0.25, 0.40, 0.10, 0.15, 0.10],  # music
        [0.35, 0.15, 0.15, 0.20, 0.15],  # dance
        [0.20, 0.15, 0.25, 0.25, 0.15],  # chat
        [0.10, 0.05, 0.35, 0.25, 0.25],  # outdoor
        [0.05, 0.05, 0.40, 0.30, 0.20],  # cooking
        [0.05, 0.00, 0.60, 0.20, 0.15],  # shopping
        [0.05, 0.00, 0.35, 0.35, 0.25],  # education
    ]
)
"""P(special moment type | category, a special moment starts), rows in `CATEGORIES` order."""

SIGNAL_MODALITY: Final = {
    "game": "comments",
    "music": "speech",
    "dance": "visual",
    "chat": "speech",
    "outdoor": "visual",
    "cooking": "visual",
    "shopping": "comments",
    "education": "speech",
}
"""The one modality through which each category's moment state can be seen (names follow
`mmbee.encoders.base.MODALITIES`: visual = frames, speech = ASR text / audio, comments)."""

MODALITY_CATEGORIES: Final = {
    m: tuple(c for c in CATEGORIES if SIGNAL_MODALITY[c] == m)
    for m in ("visual", "speech", "comments")
}

LATENT_DIM: Final = 16
"""Width of a frame's latent; the 1280-d embedding is a fixed projection of it."""
STYLE_DIM: Final = 4
"""Width of a streamer's style vector."""
N_STYLE_CLUSTERS: Final = 8
"""Styles fall into this many clusters; each has a host catchphrase and a frame border colour."""

CONTENT_SEED: Final = 20240705
"""Seed of the content constants (category / style / moment directions of frame latents)."""
FRAME_PROJECTION_SEED: Final = 1280
"""Seed of the fixed latent -> 1280-d frame embedding projection."""
LATENT_SCALE: Final = 24.0
"""Frame latents are stored as int8 = round(latent * LATENT_SCALE), clipped to [-127, 127]."""

# ------------------------------------------------------------------------------------------
# Text templates. English, ASCII only (the featurizer is all-MiniLM-L6-v2).

_CATEGORY_COMMENTS: Final = {
    "game": [
        "nice play",
        "what rank are you now",
        "that was a clean headshot",
        "which hero is this",
        "you should build more armor",
        "the lag looks bad today",
        "gg everyone",
        "how many hours do you play a day",
        "this map is my favourite",
        "show us your settings",
    ],
    "music": [
        "your voice is so good",
        "what key is this song in",
        "love this melody",
        "the guitar sounds great",
        "I have this song on repeat",
        "beautiful singing tonight",
        "is that a new microphone",
        "this reminds me of summer",
        "sing a little louder",
        "who wrote this song",
    ],
    "dance": [
        "those moves are amazing",
        "teach us this dance",
        "how long did you practice",
        "love the outfit",
        "the choreography is so smooth",
        "your energy is great",
        "I tried this and fell over",
        "which song is this dance",
        "so graceful",
        "more spins please",
    ],
    "chat": [
        "good evening everyone",
        "where are you from",
        "I just got home from work",
        "what did you eat today",
        "how is the weather there",
        "tell us a story",
        "I agree with you",
        "that is so funny",
        "first time here, hello",
        "what are your plans this weekend",
    ],
    "outdoor": [
        "where is this place",
        "the view is beautiful",
        "be careful on that path",
        "how far did you walk today",
        "is it cold up there",
        "I want to visit this lake",
        "the sunset looks amazing",
        "what camera do you use",
        "are there any animals around",
        "stay safe out there",
    ],
    "cooking": [
        "that looks delicious",
        "what spices are you using",
        "how long does it cook",
        "can you share the recipe",
        "I would add more garlic",
        "my mouth is watering",
        "which pan is that",
        "is this spicy",
        "I will try this tomorrow",
        "the knife skills are great",
    ],
    "shopping": [
        "how much is this one",
        "do you ship abroad",
        "what sizes are available",
        "is the quality good",
        "show the back please",
        "what colours do you have",
        "I bought this last week",
        "is there a discount code",
        "how long is delivery",
        "does it come with a warranty",
    ],
    "education": [
        "can you explain that again",
        "this makes sense now",
        "what book do you recommend",
        "great explanation",
        "how do I practice this",
        "is this on the exam",
        "I am taking notes",
        "can you show another example",
        "what is the formula",
        "thank you teacher",
    ],
}

_MOMENT_COMMENTS: Final = {
    "pk_battle": [
        "PK time, lets win this",
        "go go go beat them",
        "we are behind in the PK",
        "everyone support in the PK",
        "only one minute left in the PK",
        "crush the other team",
    ],
    "song_request": [
        "please sing my song next",
        "request: play the old love song",
        "can you take my song request",
        "sing the one from yesterday",
        "song request for my friend",
        "play something happy please",
    ],
    "lucky_draw": [
        "when is the lucky draw",
        "I want to win the prize",
        "joined the lucky draw",
        "good luck everyone in the draw",
        "how do I enter the draw",
        "pick me for the prize",
    ],
    "thank_you": [
        "thanks for the shout out",
        "you are welcome",
        "love this community",
        "thank you for reading my name",
        "happy to support you",
        "we love you too",
    ],
    "break": [
        "where did you go",
        "is the stream paused",
        "waiting for you to come back",
        "hello, anyone there",
        "brb too",
        "the screen is frozen",
    ],
}

_COMMENT_SUFFIXES: Final = ["", "!", "!!", " lol", " haha", " :)"]

_CATEGORY_SPEECH: Final = {
    "game": [
        "Let me try this level again, I think I can clear it.",
        "This boss has two phases, watch the second one.",
        "I am switching to the long range weapon now.",
        "The new season changed the whole map.",
        "Okay, we need to rotate to the north side.",
        "I will explain my build after this match.",
        "That was close, I only had one life left.",
        "Let me check the settings for the camera.",
    ],
    "music": [
        "This next part of the song is my favourite.",
        "Let me tune the guitar for a second.",
        "I wrote this melody on a rainy afternoon.",
        "The chorus goes up a little higher here.",
        "I will play a slow one now.",
        "Let me warm up my voice a little.",
        "This song always reminds me of home.",
        "I practiced this piece all week.",
    ],
    "dance": [
        "Okay, next routine, watch my feet.",
        "This move starts on the left foot.",
        "Let me stretch a bit before the next one.",
        "We count eight beats and then turn.",
        "This choreography took me a month.",
        "Keep your shoulders relaxed for this part.",
        "I will slow it down so you can follow.",
        "Let me change the music for the next set.",
    ],
    "chat": [
        "So tell me how your day went, everyone.",
        "I was just thinking about what to cook tonight.",
        "Someone asked me about my weekend plans.",
        "I read a funny story this morning.",
        "Let me read some of your messages.",
        "The weather here has been strange lately.",
        "I am drinking tea, what are you drinking?",
        "We can talk about anything you like today.",
    ],
    "outdoor": [
        "We are walking up the hill to the viewpoint.",
        "The river is just on the other side of these trees.",
        "It is a little windy up here today.",
        "Let me turn the camera so you can see the valley.",
        "We still have about two kilometres to go.",
        "Look at the clouds over the mountains.",
        "I found a quiet spot to rest for a minute.",
        "This trail is muddy after the rain.",
    ],
    "cooking": [
        "Now we add the onions and stir slowly.",
        "The oil needs to be hot before the meat goes in.",
        "Let the sauce simmer for five minutes.",
        "I always add a pinch of sugar here.",
        "Cut the vegetables into thin slices.",
        "Taste it and adjust the salt.",
        "This dough needs to rest for an hour.",
        "Let me show you how to fold these dumplings.",
    ],
    "shopping": [
        "This jacket comes in three colours.",
        "Let me show you the material up close.",
        "This one is our best seller this month.",
        "The size runs a little small, so pick one up.",
        "We ship every order within two days.",
        "Here is the next item in today's list.",
        "This bag has a pocket inside for your phone.",
        "Let me try it on so you can see the fit.",
    ],
    "education": [
        "Today we look at how fractions work.",
        "Write this formula down, we will use it again.",
        "Let me draw a diagram to make it clearer.",
        "The key idea is to break the problem into steps.",
        "Here is a common mistake students make.",
        "Now try the next exercise on your own.",
        "This chapter builds on what we did last week.",
        "Remember to check your units at the end.",
    ],
}

_MOMENT_SPEECH: Final = {
    "pk_battle": [
        "We are in a PK battle right now, help me win!",
        "The PK has started, only three minutes left!",
        "Our opponent is ahead in the PK, we need your support!",
        "Let's beat them in this PK round, everyone!",
    ],
    "song_request": [
        "Send me your song requests now, I will sing them.",
        "Next song is by request, tell me which one.",
        "I am taking song requests for the next ten minutes.",
        "Thank you for the request, here comes your song.",
    ],
    "lucky_draw": [
        "The lucky draw starts now, stay in the room to win!",
        "Everyone in the room can join the lucky draw.",
        "We draw the lucky winner in two minutes.",
        "Big prizes in today's lucky draw, do not leave!",
    ],
    "thank_you": [
        "Thank you so much for the gifts, I love you all!",
        "Big thanks to everyone supporting me today.",
        "I want to thank my top fans one by one.",
        "Thank you, thank you, you are the best family!",
    ],
    "break": [
        "I need to step away for a moment, be right back.",
        "Short break, do not go anywhere.",
        "Give me a minute, I will be right back.",
        "Taking a quick break, stay with me.",
    ],
}

_CATCHPHRASES: Final = [
    "Hey hey family!",
    "Welcome, welcome!",
    "Alright team.",
    "Hello my friends.",
    "Yo, what's up everyone.",
    "Good vibes only.",
    "Okay okay okay.",
    "Hi lovely people.",
]


class TextCatalogue:
    """Every text the simulator can emit, numbered; rows of the log point at these ids.

    Comment text id = `comment_id(template, suffix)`; speech text id = `speech_id(sentence,
    catchphrase)` with catchphrase -1 for none. Template and sentence indices come from the
    per-category and per-moment pools (`comment_pool`, `speech_pool`).

    Example:
        >>> cat = text_catalogue()
        >>> cat.texts[cat.comment_id(0, 0)]
        'nice play'
    """

    def __init__(self) -> None:
        comments: list[str] = []
        self.comment_category_pool: list[np.ndarray] = []
        for c in CATEGORIES:
            start = len(comments)
            comments.extend(_CATEGORY_COMMENTS[c])
            self.comment_category_pool.append(np.arange(start, len(comments)))
        self.comment_moment_pool: list[np.ndarray] = [np.zeros(0, np.int64)]
        for m in SPECIAL_MOMENTS:
            start = len(comments)
            comments.extend(_MOMENT_COMMENTS[m])
            self.comment_moment_pool.append(np.arange(start, len(comments)))
        sentences: list[str] = []
        self.speech_category_pool: list[np.ndarray] = []
        for c in CATEGORIES:
            start = len(sentences)
            sentences.extend(_CATEGORY_SPEECH[c])
            self.speech_category_pool.append(np.arange(start, len(sentences)))
        self.speech_moment_pool: list[np.ndarray] = [np.zeros(0, np.int64)]
        for m in SPECIAL_MOMENTS:
            start = len(sentences)
            sentences.extend(_MOMENT_SPEECH[m])
            self.speech_moment_pool.append(np.arange(start, len(sentences)))
        self.n_comment_templates = len(comments)
        self.n_suffixes = len(_COMMENT_SUFFIXES)
        self.n_sentences = len(sentences)
        self.sentences = tuple(sentences)
        self.catchphrases = tuple(_CATCHPHRASES)
        texts = [t + s for t in comments for s in _COMMENT_SUFFIXES]
        self.speech_offset = len(texts)
        for k in range(-1, len(_CATCHPHRASES)):
            for sentence in sentences:
                texts.append(sentence if k < 0 else f"{_CATCHPHRASES[k]} {sentence}")
        self.texts: tuple[str, ...] = tuple(texts)

    def comment_id(self, template: np.ndarray | int, suffix: np.ndarray | int) -> np.ndarray:
        """Text id of comment template(s) with suffix(es)."""
        return np.asarray(template) * self.n_suffixes + np.asarray(suffix)

    def speech_id(self, sentence: np.ndarray | int, catchphrase: np.ndarray | int) -> np.ndarray:
        """Text id of speech sentence(s) with catchphrase(s) (-1: none)."""
        return (
            self.speech_offset
            + (np.asarray(catchphrase) + 1) * self.n_sentences
            + np.asarray(sentence)
        )

    def speech_parts(self, text_id: int) -> tuple[int, int]:
        """(catchphrase or -1, sentence) of a speech text id (used by media mode's TTS cache)."""
        rel = text_id - self.speech_offset
        return rel // self.n_sentences - 1, rel % self.n_sentences


def text_catalogue() -> TextCatalogue:
    """The simulator's text catalogue (built fresh; cheap)."""
    return TextCatalogue()


# ------------------------------------------------------------------------------------------
# Frames: latent = category direction + style direction + (moment direction if the category's
# signal modality is visual) + noise; embedding = relu(latent @ P) with a fixed projection P.


def frame_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fixed directions of frame latents.

    Returns:
        category (n_categories, LATENT_DIM), style (STYLE_DIM, LATENT_DIM) and moment
        (n_moments, LATENT_DIM) directions; the `normal` moment's direction is zero.
    """
    rng = np.random.default_rng(CONTENT_SEED)
    category = rng.normal(0.0, 1.0, (len(CATEGORIES), LATENT_DIM))
    style = rng.normal(0.0, 0.6, (STYLE_DIM, LATENT_DIM))
    moment = rng.normal(0.0, 1.0, (len(MOMENTS), LATENT_DIM))
    moment[0] = 0.0
    return category, style, moment


def frame_projection() -> np.ndarray:
    """The fixed projection (LATENT_DIM, FRAME_DIM) float32 from latents to frame embeddings."""
    rng = np.random.default_rng(FRAME_PROJECTION_SEED)
    return (rng.normal(0.0, 1.0, (LATENT_DIM, FRAME_DIM)) / np.sqrt(LATENT_DIM)).astype(np.float32)


def quantize_latents(latents: np.ndarray) -> np.ndarray:
    """Float latents (N, LATENT_DIM) -> int8 codes as stored in the frames side file."""
    return np.clip(np.rint(latents * LATENT_SCALE), -127, 127).astype(np.int8)


def dequantize_latents(codes: np.ndarray) -> np.ndarray:
    """int8 codes (N, LATENT_DIM) -> float32 latents."""
    return codes.astype(np.float32) / np.float32(LATENT_SCALE)


def expand_frame_latents(latents: np.ndarray, projection: np.ndarray | None = None) -> np.ndarray:
    """Frame latents (N, LATENT_DIM) -> frame embeddings (N, FRAME_DIM) float32, >= 0.

    A deterministic function: relu(latents @ projection), the projection fixed by
    `FRAME_PROJECTION_SEED` (pass it in to skip rebuilding it per call).
    """
    p = frame_projection() if projection is None else projection
    out = np.asarray(latents, dtype=np.float32) @ p  # (N, FRAME_DIM)
    np.maximum(out, 0.0, out=out)
    return out
