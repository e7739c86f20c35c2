"""A deterministic keyword baseline that answers in the shape a moderation LLM is asked for.

Why it exists: the harness must run end to end with no network and no API key (tests, CI,
demos, notebooks), and prompt research needs a floor to compare real models against. This is
that floor, not a model: a curated lexicon of general vocabulary (a few dozen to ~100 terms per
signal) with word-boundary matching, phrases, crude inflection handling, and a handful of
small rules:

- two-word patterns with a gap ("break his jaw", "hide my cuts", "make the judge pay");
- incitement: a modal just before a violent word ("should be shot", "deserve to be beaten");
- ages under 18 as "12 year old", "fourteen year old", "14yo", "15f", "I'm 13", "under 16";
  grooming phrases and image/contact requests count as sexual only next to such a minor;
- a protected group (or a place of worship, for threats) in the same sentence turns
  dehumanising or violent words into hate; doxxing needs an exposure cue ("found", "posting");
- violence/graphic from violence plus gore, or from enough gore alone (a crash, an injury);
- damping for negation ("I would never kill ..."), benign look-alikes ("kill a process",
  "shoot a photo", "cutting carbs"), and context words near a hit (news, history, fiction,
  games, pests, sex education, prevention and recovery, counter-speech that reports a quote).

What it deliberately does not do: understand meaning, sarcasm, quotes, obfuscated spelling or
languages other than English. No slurs are listed on purpose; hate is detected from a
protected-group mention near dehumanising, stereotyping or threatening words. It reads the
category list from the prompt (`- CODE (name): definition` lines) and ignores the rest of the
prompt's wording, so it cannot tell prompts apart beyond their taxonomy. Its numbers say how
far a lexical rule gets, nothing more.

Everything is a pure function of its input: same messages, same answer, byte for byte. Work is
linear in the input (one tokenising pass and dictionary look-ups), so 1 MB takes well under a
second and hostile input (control characters, lone surrogates) cannot make it raise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_CATEGORIES",
    "THRESHOLD",
    "answer_text",
    "classify",
    "extract_content",
    "parse_taxonomy",
]

THRESHOLD = 0.5  # a category is true when its score is at least this
MAX_SCORE = 0.99  # a keyword rule is never certain
MAX_OCCURRENCES = 50  # only the first N occurrences of a term are weighed

DEFAULT_CATEGORIES: list[tuple[str, str, str]] = [
    ("S", "sexual", "Sexual content."),
    ("H", "hate", "Hateful content about a protected group."),
    ("V", "violence", "Violent content."),
    ("HR", "harassment", "Harassing content aimed at a person."),
    ("SH", "self-harm", "Content about self-harm or suicide."),
    ("S3", "sexual/minors", "Sexual content involving someone under 18."),
    ("H2", "hate/threatening", "Hateful content with violence or serious harm."),
    ("V2", "violence/graphic", "Violence in graphic detail."),
]

# ---- lexicon ---------------------------------------------------------------------------------
# signal -> {term or phrase: weight}. A weight of 1.0 alone reaches the 0.5 threshold
# (score = 1 - 0.5**weight); weaker, ambiguous words need company. Terms are matched on base
# forms, so "stabbing", "nudes" and "beaten" find "stab", "nude" and "beat".
_LEXICON: dict[str, dict[str, float]] = {
    "sexual": {
        # explicit acts, body parts and arousal
        "porn": 1, "porno": 1, "pornography": 1, "pornographic": 1, "nude": 1, "naked": 1,
        "orgasm": 1, "erotic": 1, "erotica": 1, "horny": 1, "masturbate": 1, "masturbation": 1,
        "blowjob": 1, "blow job": 1, "handjob": 1, "dildo": 1, "bdsm": 1, "xxx": 1, "aroused": 1,
        "sext": 1, "sexting": 1, "intercourse": 0.8, "molest": 1, "grope": 0.8, "have sex": 1,
        "had sex": 1, "sex with": 1, "oral sex": 1, "anal": 0.8, "threesome": 1, "orgy": 1,
        "foreplay": 1, "fellatio": 1, "cunnilingus": 1, "deepthroat": 1, "ejaculate": 1,
        "erection": 0.8, "boner": 0.8, "clit": 1, "penetrate": 0.7, "penetration": 0.6,
        "jerk off": 1, "jack off": 1, "wank": 1, "hentai": 1, "smut": 1, "lewd": 1, "milf": 1,
        "rule 34": 1, "nudity": 0.8, "topless": 0.8, "undress": 1, "striptease": 1,
        "lap dance": 1, "dirty talk": 1, "sex tape": 1, "sex toy": 1, "vibrator": 0.7,
        "fuck me": 1, "fuck her": 1, "fuck him": 0.8, "suck my": 0.8, "ride me": 0.8,
        "turn me on": 0.8, "turned on": 0.5,
        "get laid": 1, "booty call": 1, "one night stand": 0.8, "friends with benefits": 0.8,
        "make love": 0.7, "sexual relationship": 1, "sexual activity": 1, "sexual acts": 1,
        "sexual favors": 1, "dick pic": 1, "erotic roleplay": 1, "kinky": 0.8, "kink": 0.7,
        "slutty": 1, "steamy": 0.7, "sensual": 0.6, "seduce": 0.6, "seduction": 0.6, "lust": 0.6,
        "moan": 0.6, "naughty": 0.5, "explicit": 0.5, "uncensored": 0.6, "thrust": 0.4,
        "sex": 0.6, "sexual": 0.6, "sexually": 0.6, "sexy": 0.6, "fetish": 0.7, "stripper": 0.7,
        "onlyfans": 0.7, "nsfw": 0.7, "boobs": 0.7, "tits": 0.7, "genitals": 0.7, "cum": 0.7,
        "nipples": 0.6, "penis": 0.6, "vagina": 0.6, "pussy": 0.6, "arousing": 0.7, "cock": 0.5,
        "panties": 0.6, "thong": 0.5, "cleavage": 0.5, "booty": 0.4, "spank": 0.6,
        "lingerie": 0.4, "seductive": 0.4, "breasts": 0.4, "dick": 0.4, "fuck": 0.4,
        "rape": 0.5, "slut": 0.5, "whore": 0.5, "flirty": 0.5, "flirt": 0.4, "suggestive": 0.6,
        "roleplay": 0.3, "intimate": 0.3, "fondle": 1, "between her legs": 1,
        "between her thighs": 1, "thighs": 0.4, "under her shirt": 0.6, "under her skirt": 0.8,
        "every inch of your body": 0.8, "throbbing": 0.6, "climax": 0.6, "come for me": 0.8,
        "shaft": 0.4, "lick": 0.5, "suck": 0.5, "moaned": 0.6, "groan": 0.4, "gasp": 0.3,
        "stroking": 0.4, "caress": 0.5, "tongue": 0.3, "kiss": 0.3, "wet": 0.3, "dripping": 0.3,
        "unzip": 0.5, "bed": 0.2, "panting": 0.3,
        # solicitation, sex work and adult-service ads
        "sexual services": 1, "escort service": 1, "escort": 0.5, "hookup": 0.7, "hook up": 0.5,
        "hot singles": 1, "no strings attached": 0.6, "cam show": 1, "camgirl": 1, "cam girl": 1,
        "webcam": 0.3, "cam": 0.4, "private show": 0.8, "adult content": 0.8, "adult": 0.3,
        "incall": 1, "outcall": 1, "gfe": 1, "happy ending": 0.6, "full service": 0.5,
        "companionship": 0.6, "discreet": 0.4, "by the hour": 0.4, "sugar daddy": 0.7,
        "sugar baby": 0.7, "prostitute": 0.8, "prostitution": 0.6, "hooker": 0.8, "brothel": 0.8,
        "strip club": 0.7, "send nudes": 1,
    },
    "minor": {
        "child": 1, "children": 1, "kid": 1, "minor": 1, "underage": 1, "preteen": 1,
        "teenager": 1, "schoolgirl": 1, "schoolboy": 1, "toddler": 1, "infant": 1, "loli": 1,
        "lolita": 1, "shota": 1, "jailbait": 1, "little girl": 1, "little boy": 1,
        "young girl": 1, "young boy": 1, "under 18": 1, "middle school": 1, "middle schooler": 1,
        "high schooler": 1, "grade schooler": 1, "elementary school": 1, "teen": 1, "tween": 1,
        "prepubescent": 1, "pubescent": 1, "youngster": 0.8, "juvenile": 0.6, "high school": 0.5,
        "daughter": 0.5, "stepdaughter": 0.5, "niece": 0.4, "son": 0.3, "young": 0.3,
        "girl": 0.3, "boy": 0.3,
    },
    "grooming": {  # counts as sexual only next to a minor
        "mature for your age": 1, "for your age": 0.6, "our little secret": 1, "our secret": 0.8,
        "keep it between us": 1, "between us": 0.3, "don't tell your parents": 1,
        "don't tell your mom": 1, "don't tell your mum": 1, "don't tell your dad": 1,
        "don't tell anyone": 0.6, "secret from your parents": 1,
        "grown up things": 0.8, "are you alone": 0.8, "home alone": 0.4, "delete our chats": 0.8,
        "send me a pic": 0.6, "send pics": 0.6, "send me pictures": 0.6,
    },
    "minor_ctx": {  # images, secrecy and contact requests; weak, and only next to a minor
        "pic": 0.35, "pics": 0.35, "photo": 0.35, "picture": 0.35, "video call": 0.35,
        "modeling": 0.35, "swap": 0.35, "trade": 0.35, "private": 0.35, "secret": 0.35,
        "dm": 0.35, "message me": 0.35, "boyfriend": 0.35, "girlfriend": 0.35, "paying": 0.35,
        "snapchat": 0.35, "alone": 0.35, "meet up": 0.35, "chat": 0.35, "hot": 0.35,
        "body": 0.35, "older guy": 0.5, "older man": 0.5, "cute": 0.2,
    },
    "violence": {
        "kill": 1, "murder": 1, "stab": 1, "behead": 1, "decapitate": 1, "slaughter": 1,
        "massacre": 1, "torture": 1, "strangle": 1, "lynch": 1, "rape": 1, "maim": 1,
        "mutilate": 1, "dismember": 1, "bludgeon": 1, "bloodbath": 1, "gun down": 1,
        "beat up": 1, "burn alive": 1, "hurt you": 1, "break your": 1, "slit your throat": 1,
        "suicide bomber": 1, "shoot up": 1, "mass shooting": 1, "school shooting": 1,
        "you're dead": 1, "you are dead": 1, "dead meat": 0.8, "put a bullet": 1,
        "blow his brains out": 1, "curb stomp": 1, "cut off his": 0.8, "cut off her": 0.8,
        "chop off": 0.8, "beat the shit out": 1,
        "beat the crap out": 1, "kick his ass": 0.8, "hunt down": 0.8, "set fire": 0.8,
        "set on fire": 1, "burn down": 0.8, "arson": 0.7, "bloodshed": 0.8, "shoot": 0.8,
        "kidnap": 0.8, "smash your": 0.8, "slash": 0.8, "slit": 0.6, "assault": 0.7, "bomb": 0.7,
        "blow up": 0.7, "attack": 0.6, "punch": 0.6, "knock out": 0.6, "teach a lesson": 0.6,
        "deserve to die": 0.6, "by force": 0.6, "hostage": 0.6, "drown": 0.5, "poison": 0.5,
        "smash": 0.5, "bash": 0.5, "torch": 0.4, "stomp": 0.5, "beat": 0.5, "execute": 0.5,
        "brutally": 0.5,
        "choke": 0.4, "kick": 0.3, "fist": 0.4, "violence": 0.4, "violent": 0.4, "gun": 0.4,
        "shot": 0.4, "machete": 0.4, "knife": 0.3, "brutal": 0.3, "weapon": 0.3,
    },
    "glorify": {  # praise next to violence ("loved watching", "the shooter is a hero")
        "love watching": 0.6, "loved watching": 0.6, "love it": 0.6, "loved it": 0.6,
        "best thing": 0.5, "so satisfying": 0.6, "deserved it": 0.8,
        "hero": 0.6, "legend": 0.4, "follow his example": 0.8, "cheer": 0.4, "hilarious": 0.4,
        "lol": 0.3, "lmao": 0.3,
    },
    "threat": {  # extra words that make hate threatening (violence words count too)
        "exterminate": 1, "extermination": 1, "eradicate": 1, "wipe out": 1, "genocide": 1,
        "ethnic cleansing": 1, "final solution": 1, "deserve to die": 1, "should die": 1,
        "must die": 1, "gas": 0.6, "hang": 0.6, "get rid of": 0.6, "eliminate": 0.6,
        "purge": 0.6, "burn": 0.5, "die": 0.4, "deport them all": 0.6, "burn in hell": 0.6,
        "round them up": 0.8, "round up": 0.5, "gas them": 1, "line them up": 0.8,
    },
    "gore": {
        "gore": 1, "gory": 1, "entrails": 1, "disembowel": 1, "dismember": 1, "decapitate": 1,
        "behead": 1, "mutilate": 1, "splatter": 1, "pool of blood": 1, "blood everywhere": 1,
        "brain matter": 1, "exposed bone": 1, "skinned alive": 1, "bleed out": 0.8, "innards": 1,
        "headless": 0.8,
        "gruesome": 0.8, "intestines": 0.8, "insides": 0.8, "severed": 0.8, "mangled": 0.8,
        "gouge": 0.8, "ripped open": 0.8, "ripped off": 0.5, "torn off": 0.6, "guts": 0.7,
        "gaping wound": 0.8, "charred": 0.6, "crushed": 0.6, "pulp": 0.6, "gash": 0.6,
        "blood": 0.6, "corpse": 0.6, "torn apart": 0.6, "decomposing": 0.6, "bloody": 0.5,
        "bleeding": 0.5, "brains": 0.5, "flesh": 0.5, "maggots": 0.5, "rotting": 0.5,
        "bone": 0.5, "skull": 0.4, "eyeball": 0.4, "splinter": 0.3, "wound": 0.4, "spray": 0.3,
        "spill": 0.3, "twitch": 0.3, "skin": 0.3, "teeth": 0.3, "body": 0.3,
    },
    "hate_hostile": {  # full weight only near a protected-group mention
        "vermin": 1, "subhuman": 1, "untermensch": 1, "parasites": 1, "parasite": 1,
        "cockroaches": 1, "apes": 1, "savages": 1, "scum": 1, "infestation": 1, "infest": 1,
        "degenerates": 1, "inferior": 1, "not human": 1, "less than human": 1, "hate": 1,
        "despise": 1, "abomination": 1, "leeches": 1, "barbarians": 1, "groomers": 1,
        "drain on society": 1, "too emotional": 1, "breed like": 1,
        "rats": 0.8, "animals": 0.8, "monkeys": 0.8, "filth": 0.8, "plague": 0.8,
        "invaders": 0.8, "degenerate": 0.8, "go back to": 0.8, "don't belong": 0.8,
        "criminals": 0.8, "rapists": 0.8, "terrorists": 0.8, "pedophiles": 0.8, "perverts": 0.8,
        "uncivilized": 0.8, "inbred": 0.8, "freeloaders": 0.8, "drain on": 0.8,
        "can't be trusted": 0.8, "send them back": 0.8, "control the media": 1,
        "control the banks": 1, "run the media": 1, "whores": 0.8, "sluts": 0.8,
        "gold diggers": 0.6,
        "should never be allowed": 0.7, "shouldn't be allowed": 0.7, "should not be allowed": 0.7,
        "not welcome": 0.7, "primitive": 0.7, "barbaric": 0.7, "unnatural": 0.7,
        "mentally ill": 0.7, "perverted": 0.7, "steal our jobs": 0.7, "thieves": 0.7,
        "trash": 0.7, "garbage": 0.7, "disgusting": 0.7, "animal": 0.6, "savage": 0.6,
        "filthy": 0.6, "dirty": 0.6, "disease": 0.6, "invasion": 0.6, "evil": 0.6, "deport": 0.6,
        "should be banned": 0.6, "lazy": 0.6, "stupid": 0.6, "smelly": 0.6, "stink": 0.6,
        "greedy": 0.5, "sick": 0.5, "ruin": 0.5, "dumb": 0.5, "freaks": 0.6, "retarded": 0.6,
        "take our jobs": 0.6, "handouts": 0.4, "backward": 0.5, "liars": 0.5, "terrorist": 0.5,
        "every last one": 0.4, "every single one": 0.4, "all of them": 0.3,
    },
    "hate_phrase": {  # hateful on their own
        "white power": 1, "race traitor": 1, "master race": 1, "heil hitler": 1,
        "sieg heil": 1, "1488": 1, "belong in the kitchen": 1, "stay in the kitchen": 1,
        "back to the kitchen": 1, "make me a sandwich": 0.8, "go back to your country": 1,
        "white genocide": 0.8, "race war": 0.8, "great replacement": 0.7, "white pride": 0.6,
        "white supremacy": 0.5,
    },
    "harass_insult": {  # full weight only when aimed at "you"
        "idiot": 1, "moron": 1, "loser": 1, "worthless": 1, "bitch": 1, "whore": 1, "slut": 1,
        "asshole": 1, "dumbass": 1, "imbecile": 1, "cunt": 1, "twat": 1, "piece of shit": 1,
        "retard": 1, "dickhead": 1, "douchebag": 1, "scumbag": 1, "shithead": 1, "skank": 1,
        "fatso": 1, "fat ass": 1, "waste of space": 1, "waste of oxygen": 1, "bastard": 0.8,
        "prick": 0.8, "douche": 0.8, "retarded": 0.8, "hoe": 0.8, "cuck": 0.8,
        "pathetic": 0.8, "ugly": 0.8, "stupid": 0.7, "disgusting": 0.7, "freak": 0.7,
        "psycho": 0.6, "weirdo": 0.6, "coward": 0.6, "pig": 0.5, "liar": 0.5, "fraud": 0.5,
        "dumb": 0.6, "jerk": 0.6, "creep": 0.6, "failure": 0.6, "trash": 0.6, "clown": 0.5,
        "garbage": 0.5, "fat": 0.5, "shit": 0.4,
    },
    "harass_phrase": {
        "kill yourself": 1, "kys": 1, "go die": 1, "you suck": 1, "screw you": 1,
        "fuck you": 1, "fuck off": 1, "hate you": 1, "nobody likes you": 1,
        "no one likes you": 1, "everyone hates you": 1, "nobody loves you": 1,
        "nobody wants you": 1, "no one wants you": 1, "nobody would miss you": 1,
        "no one would miss you": 1, "hope you die": 1, "die in a fire": 1,
        "you deserve to die": 1, "shut the fuck up": 1, "stfu": 0.8,
        "i know where you live": 1, "drink bleach": 1, "dox": 1, "doxx": 1,
        "make her life hell": 1, "make his life hell": 1, "make your life hell": 1,
        "spam her": 1, "spam his": 1, "spam him": 1, "spam their": 0.8, "mass report": 1,
        "dogpile": 1, "flood her": 0.8, "flood his": 0.8, "ruin your life": 0.8,
        "ruin her life": 0.8, "ruin his life": 0.8,
        "you'll regret": 0.6, "you're dead": 0.6, "just die": 0.8, "new accounts": 0.5,
        "watch your back": 0.8, "go to hell": 0.8,
        "kill you": 0.6, "shut up": 0.6, "stalk": 0.6, "you should be ashamed": 0.6,
        "get lost": 0.4,
    },
    "doxx": {  # personal details; count only near an exposure cue ("found", "posting")
        "home address": 0.6, "your address": 0.6, "phone number": 0.6, "cell number": 0.6,
        "workplace": 0.6, "where you work": 0.6, "where he works": 0.6, "where she works": 0.6,
        "where she lives": 0.6, "where he lives": 0.6, "kid's school": 0.6, "kids school": 0.6,
        "license plate": 0.4, "real name": 0.4, "social security": 0.6,
    },
    "selfharm": {
        "suicidal": 1, "kill myself": 1, "end my life": 1, "end it all": 1,
        "take my own life": 1, "cut myself": 1, "cutting myself": 1, "hurt myself": 1,
        "harm myself": 1, "burn myself": 1, "self harm": 1, "selfharm": 1, "hang myself": 1,
        "shoot myself": 1, "slit my wrists": 1, "want to die": 1, "wanna die": 1,
        "better off dead": 1, "don't want to live": 1, "no reason to live": 1,
        "don't want to be here anymore": 1, "suicide note": 1, "unalive": 1, "sewerslide": 1,
        "starve myself": 1, "make myself throw up": 1, "make myself sick": 0.8, "pro ana": 1,
        "pro mia": 1, "thinspo": 1, "thinspiration": 1, "meanspo": 1, "bonespo": 1,
        "binge and purge": 1, "jump off a bridge": 1, "suicide": 0.8, "how many pills": 0.8,
        "overdose": 0.8, "noose": 0.7, "can't go on": 0.6, "kill yourself": 0.5, "kys": 0.5,
        "nobody would miss you": 0.5, "no one would miss you": 0.5, "anorexia": 0.5,
        "bulimia": 0.5, "razor blade": 0.5, "relapse": 0.4, "cutting": 0.4, "laxatives": 0.4,
        "skip meals": 0.4, "purge": 0.4, "want it to end": 0.8, "want it all to end": 1,
        "end it": 0.5, "tired of living": 1, "no point in living": 1, "wish i was dead": 1,
        "wish i were dead": 1, "never wake up": 0.8, "sleep and never wake up": 1,
        "asleep and never wake up": 1,
        "give up on life": 0.8,
        "don't see the point": 0.6, "can't do this anymore": 0.6, "i hate myself": 0.6,
        "hate my body": 0.5, "i'm disgusting": 0.5,
        "thinner": 0.4, "pills": 0.3, "jump off": 0.4, "wrists": 0.4, "starving": 0.2,
    },
}

# Two words in one sentence with a few words between them (base or raw forms):
# (signal, label, first words, second words, min words between, max words between, weight).
_BODY = ("jaw neck skull nose teeth face ribs rib leg legs arm arms knee knees spine throat"
         " head fingers wrist")
_WEAPONS = "bat bats gun guns knife knives weapon weapons pipe pipes crowbar machete rifle rifles"
_PAIRS: list[tuple[str, str, str, str, int, int, float]] = [
    ("violence", "break his jaw", "break smash snap crush bash slit stomp", _BODY, 0, 2, 1.0),
    ("violence", "make them pay", "make", "pay", 1, 2, 0.7),
    ("violence", "bring weapons", "bring grab", _WEAPONS, 0, 2, 0.8),
    ("violence", "burn it down", "burn torch", "down", 1, 3, 0.8),
    ("violence", "throw off a roof", "throw", "roof roofs building buildings bridge cliff", 1, 3,
     0.8),
    ("threat", "drive them out", "run drive chase kick throw force", "out", 1, 3, 0.6),
    ("harass_phrase", "until she quits", "until", "quit delete leave cry", 1, 1, 0.5),
    ("selfharm", "took pills", "took take swallow swallowed", "pills", 0, 3, 0.6),
    ("selfharm", "hide cuts", "hide cover", "cut scar marks wound burns", 0, 3, 1.0),
    ("selfharm", "self-harm endorsed", "cutting starve purge",
     "help relief release only numb calm again notice noticing", 0, 5, 0.8),
]

# Multi-word phrases that are one concept: single-word hits of other signals inside them are
# dropped ("kill myself" is self-harm, not violence; "suicide bomber" is violence).
_SUPPRESSING = frozenset({
    "kill myself", "kill yourself", "hang myself", "shoot myself", "cut myself", "hurt myself",
    "harm myself", "suicide bomber", "take my own life", "end my life", "cutting myself",
    "burn myself", "starve myself", "you deserve to die", "deserve to die", "burn in hell",
    "set on fire", "blow his brains out", "beat the shit out", "beat the crap out",
})

# Benign neighbours: a term followed (within 3 words) or preceded (within 2) by one of these is
# a look-alike ("kill the process", "photo shoot") and keeps only a tenth of its weight.
_AFTER: dict[str, str] = {
    "kill": "it process pid task job thread command session switch signal app application program"
            " server daemon container time lights light engine bacteria germ germs weed weeds"
            " mood battery vibe feature deal idea look outfit workout smile joke me pizza burger"
            " food meal sandwich",
    "murder": "mystery mysteries novel novels podcast podcasts show documentary pizza burger"
              " food meal sandwich plate",
    "slaughter": "me us",
    "shoot up": "heroin drugs dope meth",
    "you're dead": "to inside",
    "shoot": "photo photos picture pictures video videos film scene movie email message hoops"
             " basket breeze footage commercial wedding portrait portraits model star stars"
             " guard range me",
    "shot": "glass glasses clock",
    "attack": "surface vector vectors problem problems issue issues",
    "stab": "at",
    "beat": "game games level levels record boss traffic deadline odds egg eggs heat drum"
            " drums it me competition",
    "bomb": "exam test interview audition",
    "blow up": "balloon balloons photo picture image phone",
    "execute": "script scripts command commands query queries code program order orders plan"
               " plans function task tasks trade trades contract strategy",
    "punch": "line lines card bowl hole holes list in",
    "gun": "metal control law laws policy safety show",
    "smash": "hit button",
    "knock out": "wall",
    "sex": "education ed educator offender offenders ratio chromosome chromosomes difference"
           " differences discrimination hormone hormones",
    "sexual": "health harassment orientation education reproduction selection dimorphism",
    "pussy": "cat willow",
    "breasts": "cancer milk",
    "blood": "test tests pressure donation donor donors type sugar bank drive cell cells work"
             " orange moon vessel vessels sample samples",
    "bloody": "hell brilliant mary",
    "body": "shop language image spray lotion wash",
    "spray": "paint tan bottle",
    "gas": "price prices station stations bill bills tank leak stove mileage giant",
    "hang": "out on up",
    "die": "hard cast",
    "burn": "calories calorie fat rubber",
    "purge": "cache data logs list",
    "eliminate": "waste risk risks bug bugs",
    "trash": "can bin bag talk",
    "garbage": "can bin bag collection truck",
    "fat": "loss burn content",
    "cutting": "weight hair board boards edge cost costs back corners class classes onion onions"
               " grass paper ties tool tools coupon coupons carb carbs sugar spending budget"
               " down taxes line it",
    "minor": "injury injuries issue issues change changes key",
    "private": "school schools sector equity key",
    "trade": "deal deals war school",
    "cam": "shaft",
    "adult": "education learner learners learning supervision size",
    "young": "adult adults",
}
_BEFORE: dict[str, str] = {
    "shoot": "photo video film wedding fashion location",
    "shot": "photo screen mug flu vaccine booster covid tetanus big best good nice long"
            " espresso tequila vodka whiskey jump free hot money",
    "attack": "heart panic anxiety asthma allergy allergic",
    "stab": "take took taking",
    "beat": "heart drum",
    "bomb": "bath photo da",
    "punch": "fruit rum",
    "gun": "glue nail water nerf toy heat spray staple squirt top smoking",
    "sex": "same opposite biological assigned safe",
    "cock": "weather",
    "dick": "moby",
    "pussy": "cat",
    "breasts": "chicken turkey duck",
    "blood": "donate donated give giving fake",
    "body": "healthy strong",
    "die": "to",  # "dying to see" / "to die for"
    "kill": "dressed",
    "cutting": "hair paper cost wood",
    "cam": "dash web",
    "trade": "fair free",
}

# Words that make a whole signal less likely to be a violation when near a hit:
# signal -> (window in words either side, crossing punctuation; words).
_SIGNAL_BENIGN: dict[str, tuple[int, frozenset[str]]] = {
    "sexual": (12, frozenset(
        "education educational health healthcare clinic doctor biology anatomy awareness"
        " contraception std sti pregnancy pregnant gynecologist gynaecologist puberty"
        " reproductive medical definition define".split())),
    "selfharm": (8, frozenset(
        "prevention hotline helpline lifeline 988 awareness statistics research rates squad"
        " doors recovery recovering recovered clean free therapist therapy counselor counseling"
        " counselling grateful support plant plants garden propagate definition define"
        .split())),
    "violence": (8, frozenset(
        "police arrested arrest suspect suspects witnesses witness charged sentenced convicted"
        " trial investigation investigating gunman chess game games gaming videogame level"
        " boss tournament pests pest aphids insects bugs mosquito mosquitoes weeds mold ants"
        " termites fleas lice garden tomatoes defense defence history historical novel novels"
        " film movie movies villain character characters fiction fictional plot episode holocaust"
        " wwii ww2 century historians definition define goat cow cows pig pigs chicken"
        " chickens sheep lamb cattle livestock fish deer humanely"
        .split())),
    "hate": (15, frozenset(
        "reported report reporting condemn condemned condemns unacceptable wrong remove removed"
        " history historical documentary holocaust historians definition define".split())),
    "gore": (8, frozenset(
        "anatomy surgery surgical recipe halloween costume makeup prop props fake".split())),
}
_EXPOSURE = frozenset("found post leak leaked share expose exposed dox doxx everyone spread"
                      " publish here's".split())
_POSSESSIVE = frozenset("her his your their".split())
_COPULA = frozenset("are is r being".split())
_INCITE = frozenset("should must deserve need ought lets let's".split())  # "should be shot"
_HELP_SEEKING = ("what should i do", "what do i do", "is this normal", "how do i report",
                 "how to report", "warning signs", "should i tell", "is it okay")

# Protected groups (nouns count alone; adjectives only before a people-word). Places of
# worship stand for their congregation ("burn down that mosque").
_GROUP_NOUNS = frozenset(
    "jews jew muslims muslim christians catholics mormons hindus sikhs buddhists atheists islam"
    " judaism religion ethnicity caste immigrants immigrant migrants migrant refugees"
    " foreigners illegals blacks whites asians africans arabs mexicans latinos hispanics chinese"
    " indians pakistanis gypsies roma gays lesbians homosexuals queers bisexuals lgbt lgbtq"
    " transgenders transgender women females feminists disabled natives aborigines minorities"
    " americans russians ukrainians germans italians poles romanians albanians nigerians"
    " somalis syrians afghans iranians iraqis palestinians israelis turks kurds filipinos"
    " koreans japanese vietnamese haitians cubans jamaicans dalits".split()
)
_WORSHIP = frozenset("mosque mosques synagogue synagogues church churches temple temples"
                     " gurdwara".split())
_GROUP_ADJECTIVES = frozenset(
    "black white asian gay lesbian bisexual queer trans transgender jewish muslim christian"
    " catholic hindu sikh disabled autistic african arab mexican chinese indian hispanic"
    " latino native immigrant foreign brown".split()
)
_PEOPLE = frozenset(
    "people person persons men man women woman folks folk community communities kid kids families"
    " immigrants guys population girls boys children students neighbors parents couples"
    " citizens".split()
)
_SECOND_PERSON = frozenset("you your you're youre u ur yourself ya yours".split())
_NEGATORS = frozenset(
    "not never no don't dont didn't didnt won't wont wouldn't cannot can't cant isn't aren't"
    " wasn't shouldn't nor without".split()
)
_IRREGULAR = {"dying": "die", "beaten": "beat", "hung": "hang", "hanged": "hang",
              "slain": "kill", "bled": "blood", "kids": "kid", "teens": "teen",
              "kidding": "kidding", "skilled": "skilled", "taught": "teach", "burnt": "burn",
              "bloodier": "bloody", "bloodiest": "bloody",
              "thrown": "throw", "threw": "throw"}
_AGE_WORDS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
              "fifteen": 15, "sixteen": 16, "seventeen": 17}
_AGE_BEFORE = frozenset("i'm im you're youre she's shes he's hes aged age am".split())
_AGE_SUBJECTS = frozenset("she he daughter son stepdaughter stepson niece nephew girl boy kid"
                          " sister brother".split())  # "she is 14"
_NOT_AGE_AFTER = frozenset("minutes minute mins min hours hour hrs days day weeks week months"
                           " month times ft feet inches inch kg lbs pounds miles km percent"
                           " dollars points".split())

# Which lexicon a category uses, by its name first and by its code second.
_NAME_KEYS = {
    "sexual": "S", "sexual content": "S", "sex": "S", "hate": "H", "hate speech": "H",
    "hateful": "H", "violence": "V", "violent": "V", "harassment": "HR", "bullying": "HR",
    "self-harm": "SH", "self harm": "SH", "selfharm": "SH", "suicide": "SH",
    "sexual/minors": "S3", "sexual minors": "S3", "child sexual content": "S3",
    "hate/threatening": "H2", "hate threatening": "H2", "violence/graphic": "V2",
    "graphic violence": "V2", "violence graphic": "V2", "gore": "V2",
}
_CODE_NAMES = {code: name for code, name, _ in DEFAULT_CATEGORIES}

_STOPWORDS = frozenset(
    "about above after again against among because before being below between could doing"
    " during every further having however itself might other others ought their theirs"
    " themselves there these those through under until where which while whose would should"
    " shall something someone anyone anything everything without within including include"
    " includes contain contains containing content contents example examples material"
    " materials message messages related refers towards toward person people individual"
    " individuals users based certain specific especially whether either neither often usually"
    " texts posts comments intended meant designed makes making likely promote promotes"
    " promoting depict depicts depicting describe describes describing express expresses"
    " expressing encourage encourages encouraging things using excluded excluding description"
    " descriptions involve involves involving particular category categories other anything"
    " judge flagged false true".split()
)

_TOKEN = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*|[.!?;:,\n]")
_PUNCT = "."
_SENTENCE_END = frozenset(".!?;\n")


@dataclass(frozen=True)
class _Entry:
    signal: str
    term: str
    words: tuple[str, ...]
    weight: float


def _build_index() -> tuple[dict[str, list[_Entry]], dict[tuple[str, str], list[_Entry]],
                            frozenset[str], frozenset[str]]:
    """Single terms by word, phrases by their first two words, lexicon words, context words."""
    singles: dict[str, list[_Entry]] = {}
    phrases: dict[tuple[str, str], list[_Entry]] = {}
    lexical: set[str] = set()  # single-word terms
    context: set[str] = set()  # words of phrases and of the context rules
    for signal, terms in _LEXICON.items():
        for term, weight in terms.items():
            words = tuple(term.split())
            entry = _Entry(signal, term, words, float(weight))
            if len(words) == 1:
                singles.setdefault(words[0], []).append(entry)
                lexical.add(words[0])
            else:
                phrases.setdefault(words[:2], []).append(entry)
                context.update(words)
    for table in (_AFTER, _BEFORE):
        for key, words in table.items():
            context.update(key.split())
            context.update(words.split())
    for _, words in _SIGNAL_BENIGN.values():
        context.update(words)
    for _, _, first, second, _, _, _ in _PAIRS:
        context.update(first.split())
        context.update(second.split())
    context.update(_GROUP_NOUNS, _GROUP_ADJECTIVES, _PEOPLE, _SECOND_PERSON, _NEGATORS, _WORSHIP,
                   _EXPOSURE, _INCITE, _COPULA, _AGE_WORDS, _AGE_BEFORE, _AGE_SUBJECTS,
                   _NOT_AGE_AFTER)
    context.update({"year", "old", "yo", "under", "and", "or", "younger"})
    return singles, phrases, frozenset(lexical), frozenset(context - lexical)


_SINGLES, _PHRASES, _LEXICAL, _CONTEXT = _build_index()
_AFTER_SETS = {k: frozenset(v.split()) for k, v in _AFTER.items()}
_BEFORE_SETS = {k: frozenset(v.split()) for k, v in _BEFORE.items()}
_PAIR_SETS = [(sig, label, frozenset(a.split()), frozenset(b.split()), lo, hi, w)
              for sig, label, a, b, lo, hi, w in _PAIRS]
_PAIR_FIRST = frozenset().union(*(p[2] for p in _PAIR_SETS))
_SUFFIXES = (("ies", "y"), ("es", ""), ("s", ""), ("ed", ""), ("ed", "e"), ("d", ""),
             ("ing", ""), ("ing", "e"), ("ers", ""), ("er", ""), ("ers", "e"), ("er", "e"))
_AGE = re.compile(r"(\d{1,2})(?:yo|yr|yrs|y|f|m)")


def _strip(token: str, vocab: frozenset[str]) -> str | None:
    for suffix, repl in _SUFFIXES:
        if token.endswith(suffix) and len(token) - len(suffix) >= 2:
            stem = token[: -len(suffix)]
            if stem + repl in vocab:
                return stem + repl
            if not repl and len(stem) >= 4 and stem[-1] == stem[-2] and stem[:-1] in vocab:
                return stem[:-1]  # stabbing -> stabb -> stab
    return None


def _base(token: str) -> str:
    """The word a token inflects (stabbing -> stab, nudes -> nude), else the token.

    Lexicon words win over context words, so "girls" finds the lexicon's "girl" even though
    "girls" is also a people-word."""
    if token in _IRREGULAR:
        return _IRREGULAR[token]
    if token.endswith("'s"):
        token = token[:-2]
    if token in _LEXICAL:
        return token
    found = _strip(token, _LEXICAL)
    if found is not None:
        return found
    if token in _CONTEXT:
        return token
    return _strip(token, _CONTEXT) or token


def _tokens(text: str) -> tuple[list[str], list[str]]:
    """Lower-cased raw tokens and their base forms; punctuation is kept raw, '.' as base."""
    raw: list[str] = []
    base: list[str] = []
    cache: dict[str, str] = {}
    for tok in _TOKEN.findall(text.lower()):
        if len(tok) == 1 and tok in ".!?;:,\n":
            raw.append(tok)
            base.append(_PUNCT)
            continue
        tok = tok.replace("\u2019", "'")
        b = cache.get(tok)
        if b is None:
            b = cache[tok] = _base(tok)
        raw.append(tok)
        base.append(b)
    return raw, base


def _is(raw: list[str], base: list[str], j: int, words: frozenset[str]) -> bool:
    return base[j] in words or raw[j] in words


@dataclass
class _Hit:
    signal: str
    term: str
    start: int
    end: int
    weight: float
    key: str = ""  # the word whose look-alikes apply; the term itself when empty


def _age_at(raw: list[str], base: list[str], i: int) -> int | None:
    """An age under 18 stated at token i: "12 year old", "14yo", "15f", "I'm 13", "under 16"."""
    tok = base[i]
    if tok in _AGE_WORDS:
        age = _AGE_WORDS[tok]
    elif tok.isdigit() and len(tok) <= 2:
        age = int(tok)
    else:
        m = _AGE.fullmatch(tok) if tok[:1].isdigit() else None
        return int(m.group(1)) if m and 0 < int(m.group(1)) < 18 else None
    if not 0 < age < 18:
        return None
    nxt = base[i + 1 : i + 3]
    prev = base[i - 1] if i else ""
    if nxt == ["year", "old"] or nxt[:1] == ["yo"] or nxt == ["y", "o"]:
        return age
    if tok in _AGE_WORDS:
        return None
    if prev == "under" or nxt in (["and", "under"], ["or", "younger"], ["and", "younger"]):
        return age
    if base[i - 2 : i] == ["age", "of"] and i >= 3 and base[i - 3] == "under":
        return age
    said = (raw[i - 1] if i else "") in _AGE_BEFORE or (
        i >= 2 and raw[i - 1] in ("is", "was") and raw[i - 2] in _AGE_SUBJECTS)
    if said and age >= 10:
        if not nxt or nxt[0] not in _NOT_AGE_AFTER:
            return age
    return None


def _find_hits(raw: list[str], base: list[str]) -> list[_Hit]:
    n = len(base)
    multi: list[_Hit] = []
    single: list[_Hit] = []
    covered: set[int] = set()  # positions inside a phrase that stands for one concept
    inside: set[tuple[str, int]] = set()  # (signal, position) inside a phrase of that signal
    for i, tok in enumerate(base):
        if tok == _PUNCT:
            continue
        firsts = (tok,) if raw[i] == tok else (tok, raw[i])
        for first in firsts:
            for entry in _SINGLES.get(first, ()):
                single.append(_Hit(entry.signal, entry.term, i, i + 1, entry.weight))
        if i + 1 < n:
            seconds = (base[i + 1],) if raw[i + 1] == base[i + 1] else (base[i + 1], raw[i + 1])
            for first in firsts:
                for second in seconds:
                    for entry in _PHRASES.get((first, second), ()):
                        ws = entry.words
                        k = len(ws)
                        if i + k <= n and all(
                            base[i + m] == w or raw[i + m] == w for m, w in enumerate(ws)
                        ):
                            multi.append(_Hit(entry.signal, entry.term, i, i + k, entry.weight))
                            inside.update((entry.signal, j) for j in range(i, i + k))
                            if entry.term in _SUPPRESSING:
                                covered.update(range(i, i + k))
        if tok[:1].isdigit() or tok in _AGE_WORDS:
            age = _age_at(raw, base, i)
            if age is not None:
                single.append(_Hit("minor", f"{age}-year-old", i, i + 1, 1.0))
        if tok in _PAIR_FIRST or raw[i] in _PAIR_FIRST:
            for signal, label, first, second, lo, hi, weight in _PAIR_SETS:
                if not _is(raw, base, i, first):
                    continue
                for j in range(i + 1, min(n, i + hi + 2)):
                    if base[j] == _PUNCT:
                        break
                    if j - i - 1 >= lo and _is(raw, base, j, second):
                        multi.append(_Hit(signal, label, i, j + 1, weight, key=tok))
                        break
    return multi + [h for h in single
                    if h.start not in covered and (h.signal, h.start) not in inside]


def _window(base: list[str], start: int, end: int, before: int, after: int,
            stop_at_punct: bool = True) -> Iterable[int]:
    """Indices of the words around [start, end), nearest first on each side."""
    for j in range(start - 1, max(-1, start - before - 1), -1):
        if base[j] == _PUNCT and stop_at_punct:
            break
        yield j
    for j in range(end, min(len(base), end + after)):
        if base[j] == _PUNCT and stop_at_punct:
            break
        yield j


def _near(raw: list[str], base: list[str], hit: _Hit, span: int, words: frozenset[str],
          stop_at_punct: bool = False) -> bool:
    return any(_is(raw, base, j, words) for j in _window(base, hit.start, hit.end, span, span,
                                                         stop_at_punct))


def _negated(raw: list[str], base: list[str], start: int) -> bool:
    for j in range(start - 1, max(-1, start - 5), -1):
        if base[j] == _PUNCT:
            return False
        if _is(raw, base, j, _NEGATORS):
            return True
    return False


def _benign_key(signal: str) -> str:
    return "hate" if signal.startswith("hate") else signal


def _effective(hit: _Hit, raw: list[str], base: list[str]) -> float:
    """The hit's weight after look-alike, incitement, negation and context adjustments."""
    w = hit.weight
    key = hit.key or hit.term
    lookalike = False
    after = _AFTER_SETS.get(key)
    if after and any(_is(raw, base, j, after) for j in range(hit.end, min(len(base), hit.end + 3))
                     if base[j] != _PUNCT):
        lookalike = True
    before = _BEFORE_SETS.get(key)
    if before and any(_is(raw, base, j, before) for j in range(max(0, hit.start - 2), hit.start)):
        lookalike = True
    if lookalike:
        return w * 0.1
    if hit.signal in ("violence", "threat") and any(
        _is(raw, base, j, _INCITE) for j in _window(base, hit.start, hit.start, 3, 0)
    ):
        w += 0.6  # "should be shot", "deserve to be beaten", "need to be taught a lesson"
    if hit.signal not in ("minor", "gore") and _negated(raw, base, hit.start):
        w *= 0.25
    benign = _SIGNAL_BENIGN.get(_benign_key(hit.signal))
    if benign and _near(raw, base, hit, benign[0], benign[1]):
        w *= 0.25
    return w


def _group_near(raw: list[str], base: list[str], start: int, end: int, span: int,
                worship: bool = False) -> bool:
    """A protected group in the same sentence within `span` words (commas do not end it)."""
    def scan(js: Iterable[int]) -> bool:
        for j in js:
            if raw[j] in _SENTENCE_END:
                return False
            if _is(raw, base, j, _GROUP_NOUNS) or (worship and _is(raw, base, j, _WORSHIP)):
                return True
            if j + 1 < len(base) and _is(raw, base, j + 1, _PEOPLE) and (
                _is(raw, base, j, _GROUP_ADJECTIVES) or raw[j] == "you"
            ):
                return True
        return False

    return (scan(range(start + 1, end)) or scan(range(start - 1, max(-1, start - span - 1), -1))
            or scan(range(end, min(len(base), end + span))))


class _Signals:
    """Accumulated weights and matched terms per signal."""

    def __init__(self) -> None:
        self.by_term: dict[str, dict[str, float]] = {}

    def add(self, signal: str, term: str, weight: float) -> None:
        if weight <= 0:
            return
        terms = self.by_term.setdefault(signal, {})
        terms[term] = min(2.0, terms.get(term, 0.0) + weight)  # one word cannot run away

    def weight(self, *signals: str) -> float:
        return sum(sum(self.by_term.get(s, {}).values()) for s in signals)

    def terms(self, *signals: str) -> list[str]:
        out: list[str] = []
        for s in signals:
            out.extend(t for t, w in self.by_term.get(s, {}).items() if w >= 0.2 and t not in out)
        return out


def _score(weight: float) -> float:
    return min(MAX_SCORE, 1.0 - 0.5**weight) if weight > 0 else 0.0


def _signals(raw: list[str], base: list[str]) -> _Signals:
    sig = _Signals()
    n_tok = len(base)
    seen: dict[tuple[str, str], int] = {}
    for hit in _find_hits(raw, base):
        n = seen[hit.signal, hit.term] = seen.get((hit.signal, hit.term), 0) + 1
        if n > MAX_OCCURRENCES:  # the term's weight is capped anyway; keep huge inputs fast
            continue
        w = _effective(hit, raw, base)
        if hit.signal == "hate_hostile":
            if not _group_near(raw, base, hit.start, hit.end, 10):
                w *= 0.3
            elif _near(raw, base, hit, 4, _COPULA, stop_at_punct=True):
                w *= 1.4  # "<group> are <word>" says it of the whole group
            sig.add("hate", hit.term, w)
        elif hit.signal == "hate_phrase":
            sig.add("hate", hit.term, w)
        elif hit.signal == "harass_insult":
            targeted = _near(raw, base, hit, 4, _SECOND_PERSON)
            sig.add("harassment", hit.term, w if targeted else w * 0.4)
        elif hit.signal == "harass_phrase":
            sig.add("harassment", hit.term, w)
        elif hit.signal == "doxx":  # someone's details plus "found"/"posting" is exposure
            if not _near(raw, base, hit, 10, _EXPOSURE):
                w *= 0.3
            elif hit.start and (raw[hit.start - 1] in _POSSESSIVE
                                or raw[hit.start - 1].endswith("'s")):
                w *= 1.7  # "posting her home address"
            sig.add("harassment", hit.term, w)
        else:
            sig.add(hit.signal, hit.term, w)
            if hit.signal == "violence" and any(
                _is(raw, base, j, _SECOND_PERSON) for j in range(hit.end, min(n_tok, hit.end + 3))
            ):
                sig.add("harassment", hit.term, w)  # a violent threat aimed at "you"
            if hit.signal in ("violence", "threat") and _group_near(
                raw, base, hit.start, hit.end, 10, worship=True
            ):
                sig.add("hate", hit.term, w)  # "kill all <group>" is hateful as well
    return sig


def _lexicon_key(code: str, name: str) -> str | None:
    """The default code whose lexicon fits this category, or None for the word fallback."""
    norm = " ".join(re.findall(r"[a-z0-9/\-]+", name.lower()))
    if norm in _NAME_KEYS:
        return _NAME_KEYS[norm]
    canonical = _CODE_NAMES.get(code)
    if canonical is None:
        return None
    if not norm:
        return code
    stems = {w[:4] for w in re.findall(r"[a-z]+", canonical)}
    return code if any(w[:4] in stems for w in re.findall(r"[a-z]+", norm)) else None


def _stem(word: str) -> str:
    if len(word) >= 5 and word.endswith("s"):
        word = word[:-1]
    return word[:6]


def _fallback_words(name: str, definition: str) -> tuple[set[str], set[str]]:
    def words(s: str) -> set[str]:
        return {
            _stem(w) for w in _TOKEN.findall(s.lower())
            if len(w) >= 5 and w not in _STOPWORDS and not w.isdigit()
        }

    name_stems = words(name)
    return name_stems, words(definition) - name_stems


# ---- public API ------------------------------------------------------------------------------
_TAXONOMY_LINE = re.compile(r"^[ \t]*-[ \t]*([A-Za-z][A-Za-z0-9_]*)[ \t]*\(([^()\n]*)\)[ \t]*:[ \t]*(.*)$", re.M)


def parse_taxonomy(system_and_user_text: str) -> list[tuple[str, str, str]]:
    """Categories from `- CODE (name): definition` lines, first occurrence of a code wins."""
    seen: set[str] = set()
    out: list[tuple[str, str, str]] = []
    for m in _TAXONOMY_LINE.finditer(system_and_user_text):
        code = m.group(1)
        if code not in seen:
            seen.add(code)
            out.append((code, m.group(2).strip(), m.group(3).strip()))
    return out


def extract_content(user_text: str) -> str:
    """The text between the first `<content>` and the last `</content>`, else the whole text."""
    start = user_text.find("<content>")
    if start < 0:
        return user_text
    start += len("<content>")
    end = user_text.rfind("</content>")
    body = user_text[start:end] if end >= start else user_text[start:]
    return body.strip("\r\n")


def _classify(text: str, categories: list[tuple[str, str, str]]) -> tuple[dict[str, float], dict[str, list[str]]]:
    raw, base = _tokens(text)
    sig = _signals(raw, base)
    w = sig.weight
    derived: dict[str, tuple[float, list[str]]] = {}

    def sexual() -> float:
        """Sexual weight; grooming and image/contact requests count only next to a minor."""
        total = w("sexual")
        if w("minor") >= 0.5:
            extra = w("grooming", "minor_ctx")
            if extra and any(p in " ".join(raw) for p in _HELP_SEEKING):
                extra *= 0.25  # a child or parent asking for help, not an offender
            total += extra
        return total

    def violence() -> float:
        v = w("violence")
        return v + w("glorify") if v >= 0.5 else v

    def lex(key: str) -> tuple[float, list[str]]:
        if key not in derived:
            if key == "S":
                derived[key] = (_score(sexual()), sig.terms("sexual", "grooming"))
            elif key == "H":
                derived[key] = (_score(w("hate")), sig.terms("hate"))
            elif key == "V":
                derived[key] = (_score(violence()), sig.terms("violence", "glorify"))
            elif key == "HR":
                derived[key] = (_score(w("harassment")), sig.terms("harassment"))
            elif key == "SH":
                derived[key] = (_score(w("selfharm")), sig.terms("selfharm"))
            elif key == "S3":  # sexual AND a minor
                s = min(_score(sexual()), _score(w("minor")))
                derived[key] = (s, sig.terms("sexual", "grooming", "minor") if s > 0 else [])
            elif key == "H2":  # hate AND a threat or violence
                s = min(_score(w("hate")), _score(w("threat", "violence")))
                derived[key] = (s, sig.terms("hate", "threat", "violence") if s > 0 else [])
            else:  # V2: violence with gore, or enough gore on its own (a crash, an injury)
                gore, vio = w("gore"), w("violence")
                s = min(_score(vio), _score(gore))
                if gore > 0:
                    s = max(s, _score(gore + 0.5 * vio - 0.5))
                derived[key] = (s, sig.terms("gore", "violence") if s > 0 else [])
        return derived[key]

    text_stems: set[str] | None = None
    scores: dict[str, float] = {}
    terms: dict[str, list[str]] = {}
    for code, name, definition in categories:
        key = _lexicon_key(code, name)
        if key is not None:
            scores[code], terms[code] = lex(key)
            continue
        if text_stems is None:
            text_stems = {_stem(t) for t in raw if len(t) >= 4}
        name_stems, def_stems = _fallback_words(name, definition)
        hits_name = sorted(name_stems & text_stems)
        hits_def = sorted(def_stems & text_stems)
        scores[code] = _score(len(hits_name) + 0.5 * len(hits_def))
        terms[code] = hits_name + hits_def
    return scores, terms


def classify(text: str, categories: list[tuple[str, str, str]]) -> dict[str, float]:
    """Score in [0, 1] per category code; a category is true when its score >= THRESHOLD."""
    return _classify(text, categories)[0]


def _message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _clean(s: str) -> str:
    """Printable, encodable text (no lone surrogates, no control characters)."""
    s = s.encode("utf-8", "replace").decode("utf-8")
    return "".join(ch if ch.isprintable() else " " for ch in s)


def answer_text(messages: list[dict]) -> str:
    """The full answer: a commentary sentence or two, then the JSON verdict on its own line."""
    msgs = [m for m in messages if isinstance(m, dict)]
    system = "\n".join(_message_text(m) for m in msgs if m.get("role") in ("system", "developer"))
    users = [_message_text(m) for m in msgs if m.get("role") == "user"]
    # The taxonomy comes from the instructions, never from inside <content> (no injection).
    categories = parse_taxonomy(system)
    if not categories:
        outside = "\n".join(re.sub(r"<content>.*?(?:</content>|\Z)", " ", u, flags=re.S) for u in users)
        categories = parse_taxonomy(outside)
    if not categories:
        categories = list(DEFAULT_CATEGORIES)
    if users:
        text = extract_content(users[-1])
    else:
        text = "\n".join(_message_text(m) for m in msgs if m.get("role") not in ("system", "developer"))

    scores, terms = _classify(text, categories)
    verdicts = {code: scores[code] >= THRESHOLD for code, _, _ in categories}
    names = {code: _clean(name) or code for code, name, _ in categories}
    found = [c for c, v in verdicts.items() if v]
    weak = [c for c, v in verdicts.items() if not v and scores[c] > 0]

    def describe(codes: list[str]) -> str:
        parts = []
        for c in codes:
            shown = ", ".join(_clean(t) for t in terms[c][:4])
            parts.append(f"{names[c]} ({shown})" if shown else names[c])
        return "; ".join(parts)

    if found:
        commentary = f"Keyword matches point to {describe(found)}."
        commentary += " This is a lexical signal only; context was not understood."
        rationale = "keyword baseline: " + "; ".join(
            f"{c}=" + ",".join(_clean(t) for t in terms[c][:4]) for c in found
        )
    elif weak:
        commentary = (
            f"Only weak keyword signals for {describe(weak)}, below the flagging threshold, "
            "so nothing is flagged."
        )
        rationale = "keyword baseline: weak matches below threshold"
    else:
        commentary = "No terms from the keyword lexicon matched, so this baseline flags nothing."
        rationale = "keyword baseline: no lexicon match"
    verdict = {
        "flagged": bool(found),
        "categories": verdicts,
        "scores": {code: round(scores[code], 3) for code, _, _ in categories},
        "rationale": rationale,
    }
    return f"Commentary: {commentary}\n{json.dumps(verdict, ensure_ascii=False)}"
