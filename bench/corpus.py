"""Synthetic agent memories and questions: templates filled from word lists, seeded, repeatable.

Ten categories of equal weight (so a filter on one category selects about 10%), each with
sentence templates an assistant might remember about its users (people, places, preferences,
events, dates, numbers) and natural questions over the same slots.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split("|"))


PEOPLE = _words(
    "Alice|Bruno|Carmen|Dmitri|Elena|Farid|Grace|Hiroshi|Ingrid|Jamal|Kasia|Liam|Mariana|Nikhil|"
    "Olga|Pedro|Quinn|Rosa|Samir|Tomoko|Umar|Valentina|Wei|Ximena|Yusuf|Zoe|Amara|Bjorn|Chloe|"
    "Diego|Esther|Felix|Gabriela|Hamza|Isla|Jonas|Keiko|Lucas|Maya|Nadia|Oscar|Priya|Rafael|"
    "Sofia|Tariq|Ursula|Viktor|Wanjiru|Xavier|Yara|Zeynep|Anika|Bongani|Clara|Emeka|Freya|Goran|"
    "Hana|Ivan|Julia"
)
CITIES = _words(
    "Lisbon|Kyoto|Nairobi|Montreal|Oslo|Buenos Aires|Seoul|Cape Town|Edinburgh|Hanoi|Lima|Vienna|"
    "Reykjavik|Marrakesh|Melbourne|Istanbul|Prague|Mexico City|Copenhagen|Singapore|Barcelona|"
    "Tbilisi|Vancouver|Dublin|Krakow|Osaka|Athens|Bogota|Helsinki|Porto|Zurich|Valencia|Bangkok|"
    "Accra|Seville|Tallinn|Naples|Boston|Auckland"
)
COUNTRIES = _words(
    "Portugal|Japan|Kenya|Canada|Norway|Argentina|South Korea|Scotland|Vietnam|Peru|Austria|"
    "Iceland|Morocco|Greece|Georgia|Colombia|Finland|Thailand|Ghana|New Zealand|Chile|Italy"
)
RELATIONS = _words(
    "sister|brother|mother|father|cousin|daughter|son|partner|aunt|uncle|grandmother"
)
JOBS = _words(
    "nurse|software engineer|teacher|architect|pharmacist|carpenter|data analyst|pilot|chef|"
    "lawyer|graphic designer|electrician|physiotherapist|accountant|journalist|vet"
)
COMPANIES = _words(
    "Northwind|Acme Analytics|Bluefin Labs|Cedar Health|Orbital Freight|Lumen Bank|Kite Robotics|"
    "Harbor Media|Pinecrest Energy|Quill Software|Tessera Foods|Atlas Logistics"
)
PROJECTS = _words(
    "billing migration|mobile app redesign|data warehouse|onboarding revamp|pricing experiment|"
    "search relaunch|warehouse automation|customer portal|security audit|Q3 forecast"
)
FOODS = _words(
    "coriander|olives|mushrooms|blue cheese|anchovies|beetroot|liver|okra|aubergine|raw onion|"
    "oysters|tofu|pineapple on pizza|licorice|brussels sprouts"
)
ALLERGENS = _words("peanuts|shellfish|gluten|sesame|tree nuts|eggs|soy|kiwi|strawberries")
CUISINES = _words(
    "Thai|Italian|Ethiopian|Mexican|Japanese|Lebanese|Indian|Peruvian|Korean|Georgian"
)
DISHES = _words(
    "ramen|mushroom risotto|lamb tagine|pad see ew|paella|pho|shakshuka|bibimbap|butter chicken|"
    "ceviche|khachapuri|moussaka|jollof rice|pierogi|tonkatsu"
)
RESTAURANTS = _words(
    "Casa Lupe|The Green Fig|Sakura House|Little Saigon|Trattoria Nonna|Blue Door|Mesa Verde|"
    "Golden Lantern|Harbour Grill|Cafe Olinda|Spice Route|The Copper Pot"
)
DRINKS = _words("black coffee|oat flat white|green tea|espresso|rooibos|chai latte|mate")
MEDICINES = _words("ibuprofen|metformin|sertraline|cetirizine|levothyroxine|amoxicillin|vitamin D")
DOCTORS = _words(
    "Dr. Okafor|Dr. Lindqvist|Dr. Tanaka|Dr. Moreau|Dr. Haddad|Dr. Kowalski|Dr. Mensah"
)
CONDITIONS = _words(
    "asthma|migraines|lower back pain|hay fever|high blood pressure|eczema|insomnia|"
    "type 2 diabetes|a torn meniscus"
)
INSTRUMENTS = _words("piano|cello|guitar|violin|drums|saxophone|ukulele|trumpet|flute")
SPORTS = _words("tennis|football|badminton|squash|volleyball|padel|basketball|table tennis")
TEAMS = _words(
    "Benfica|Celtic|the Boston Celtics|Boca Juniors|Ajax|the Toronto Raptors|Galatasaray|"
    "the All Blacks|Borussia Dortmund|Napoli"
)
BANDS = _words("Radiohead|Khruangbin|Fleetwood Mac|Daft Punk|Tinariwen|Bjork|Arctic Monkeys|ABBA")
BOOKS = _words(
    "Middlemarch|The Overstory|Piranesi|Sapiens|Dune|The Left Hand of Darkness|Beloved|"
    "Project Hail Mary|War and Peace|The Name of the Wind"
)
HOBBIES = _words(
    "bouldering|watercolour painting|sourdough baking|birdwatching|pottery|chess|woodworking|"
    "sailing|knitting|trail running|photography|gardening"
)
BANKS = _words("Lumen Bank|Northern Trust Union|Cobalt Credit|Meridian Savings|Alder Bank")
GOALS = _words(
    "a new car|a house deposit|a wedding|a trip to Japan|a sabbatical|a new laptop|"
    "an emergency fund"
)
ITEMS = _words(
    "standing desk|rain jacket|coffee grinder|road bike|pair of noise-cancelling headphones|"
    "slow cooker|pair of winter boots|backpack|desk chair|Kindle|blender|tent"
)
STORES = _words("Northmart|Bolt Electronics|Greenleaf Grocers|Urban Outfit|HomeBase|Trailhead")
BRANDS = _words("Asics|Adidas|New Balance|Nike|Hoka|Salomon|Veja|On")
COLOURS = _words("navy|forest green|burgundy|mustard yellow|charcoal|sky blue|cream")
DEVICES = _words("Pixel 8|iPhone 15|ThinkPad X1|MacBook Air|Galaxy S23|Surface Pro|Fairphone 5")
SYSTEMS = _words("Linux|macOS|Windows 11|Android 14|iOS 17|ChromeOS")
APPS = _words("Slack|Notion|Spotify|Zoom|Obsidian|Trello|WhatsApp|Signal|Figma|Todoist")
EDITORS = _words("VS Code|Neovim|Emacs|PyCharm|Sublime Text|Zed")
LANGUAGES = _words("Python|TypeScript|Go|Rust|Kotlin|Java|Elixir|C#")
EVENTS = _words(
    "dentist appointment|team offsite|parent-teacher meeting|yoga class|job interview|"
    "car service|quarterly review|book club|flight|haircut|visa interview|wedding rehearsal"
)
WEEKDAYS = _words("Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday")
MONTHS = _words(
    "January|February|March|April|May|June|July|August|September|October|November|December"
)
SEASONS = _words("spring|summer|autumn|winter")
SEATS = _words("window|aisle")
DOG_BREEDS = _words("border collie|labrador|dachshund|greyhound|beagle|shiba inu|poodle")
PET_NAMES = _words("Biscuit|Luna|Pepper|Miso|Rocky|Nala|Olive|Ziggy|Mango|Juno")
PAY_METHODS = _words("card|bank transfer|cash|Apple Pay")

START = date(2022, 1, 1)
DAYS = (date(2025, 12, 31) - START).days


def _date(rng: random.Random) -> date:
    return START + timedelta(days=rng.randrange(DAYS))


def _fmt_date(day: date) -> str:
    return f"{MONTHS[day.month - 1]} {day.day}, {day.year}"


def _time(rng: random.Random) -> str:
    hour, minute = rng.randrange(6, 22), rng.choice((0, 15, 30, 45))
    return f"{(hour - 1) % 12 + 1}:{minute:02d} {'am' if hour < 12 else 'pm'}"


def _money(low: int, high: int, step: int) -> Callable[[random.Random], str]:
    return lambda rng: f"${rng.randrange(low, high, step):,}"


def _number(low: int, high: int) -> Callable[[random.Random], str]:
    return lambda rng: str(rng.randint(low, high))


def _pick(words: tuple[str, ...]) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(words)


SLOTS: dict[str, Callable[[random.Random], str]] = {
    "person": _pick(PEOPLE),
    "person2": _pick(PEOPLE),
    "city": _pick(CITIES),
    "city2": _pick(CITIES),
    "country": _pick(COUNTRIES),
    "relation": _pick(RELATIONS),
    "job": _pick(JOBS),
    "company": _pick(COMPANIES),
    "project": _pick(PROJECTS),
    "food": _pick(FOODS),
    "allergen": _pick(ALLERGENS),
    "cuisine": _pick(CUISINES),
    "dish": _pick(DISHES),
    "restaurant": _pick(RESTAURANTS),
    "drink": _pick(DRINKS),
    "medicine": _pick(MEDICINES),
    "doctor": _pick(DOCTORS),
    "condition": _pick(CONDITIONS),
    "instrument": _pick(INSTRUMENTS),
    "sport": _pick(SPORTS),
    "team": _pick(TEAMS),
    "band": _pick(BANDS),
    "book": _pick(BOOKS),
    "hobby": _pick(HOBBIES),
    "bank": _pick(BANKS),
    "goal": _pick(GOALS),
    "item": _pick(ITEMS),
    "store": _pick(STORES),
    "brand": _pick(BRANDS),
    "colour": _pick(COLOURS),
    "device": _pick(DEVICES),
    "os": _pick(SYSTEMS),
    "app": _pick(APPS),
    "app2": _pick(APPS),
    "editor": _pick(EDITORS),
    "language": _pick(LANGUAGES),
    "event": _pick(EVENTS),
    "weekday": _pick(WEEKDAYS),
    "weekday2": _pick(WEEKDAYS),
    "month": _pick(MONTHS),
    "season": _pick(SEASONS),
    "seat": _pick(SEATS),
    "dog_breed": _pick(DOG_BREEDS),
    "pet_name": _pick(PET_NAMES),
    "pay_method": _pick(PAY_METHODS),
    "date": lambda rng: _fmt_date(_date(rng)),
    "date2": lambda rng: _fmt_date(_date(rng)),
    "year": _number(2015, 2026),
    "year_ahead": _number(2026, 2030),
    "day": _number(1, 28),
    "time": _time,
    "time2": _time,
    "amount": _money(40_000, 180_000, 500),
    "amount_small": _money(20, 2_500, 5),
    "amount_small2": _money(200, 3_000, 50),
    "code": lambda rng: f"{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}{rng.randrange(10**5, 10**6)}",
    "last4": lambda rng: f"{rng.randrange(10_000):04d}",
    "seat_no": lambda rng: f"{rng.randint(1, 30)}{rng.choice('ABCDEF')}",
    "n": _number(2, 14),
    "n2": _number(2, 40),
    "percent": _number(3, 25),
    "dose": lambda rng: str(rng.choice((5, 10, 20, 25, 50, 100, 200, 400, 500))),
    "bpm": _number(48, 82),
    "km": _number(3, 21),
    "size": lambda rng: str(rng.choice((37, 38, 39, 40, 41, 42, 43, 44, 45, 46))),
}

# category -> (memory type, memory templates, question templates)
CATEGORIES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "travel": (
        "episodic",
        (
            "{person} is flying to {city} on {date} and prefers a {seat} seat.",
            "{person} booked a hotel in {city} for {n} nights from {date}; confirmation {code}.",
            "{person}'s favourite holiday destination is {country}; they last went in {year}.",
            "{person} wants to visit {city} next {season} with their {relation}.",
            "{person} lost a suitcase on the flight to {city} in {month} {year}.",
            "The {date} train from {city} to {city2} leaves at {time}; {person} is in {seat_no}.",
            "{person} needs a visa for {country} and applied for it on {date}.",
        ),
        (
            "Where is {person} flying to?",
            "Which seat does {person} like on planes?",
            "Where is {person} staying in {city}?",
            "Where does {person} want to go on holiday?",
            "When does {person}'s train to {city2} leave?",
            "Did {person} lose luggage on a trip?",
        ),
    ),
    "food": (
        "semantic",
        (
            "{person} is allergic to {allergen} and avoids {cuisine} dishes that contain it.",
            "{person}'s favourite restaurant is {restaurant} in {city}; they always order {dish}.",
            "{person} has been vegetarian since {year} but still eats fish at {restaurant}.",
            "{person} does not like {food} and asked not to be offered it again.",
            "For their {relation}'s birthday on {date}, {person} will cook {dish} for {n} people.",
            "{person} drinks {drink} every morning, usually {n} cups before {time}.",
            "{person} loves {cuisine} food, especially {dish}.",
        ),
        (
            "What is {person} allergic to?",
            "What is {person}'s favourite restaurant?",
            "Is {person} vegetarian?",
            "Which food does {person} dislike?",
            "What does {person} drink in the morning?",
            "What kind of cuisine does {person} enjoy?",
        ),
    ),
    "work": (
        "episodic",
        (
            "{person} started a new job as a {job} at {company} on {date}.",
            "{person} leads the {project} at {company}; the deadline is {date}.",
            "{person}'s manager at {company} is {person2}; their 1:1 is every {weekday} at {time}.",
            "{person} asked for a salary of {amount} in the performance review on {date}.",
            "{person} prefers written updates over meetings and keeps {weekday} mornings free.",
            "{person} presented the {project} results to {n2} people on {date}.",
            "{person} is interviewing with {company} for a {job} role on {date}.",
        ),
        (
            "Where does {person} work?",
            "Who is {person}'s manager?",
            "When is the deadline for the {project}?",
            "How much salary did {person} ask for?",
            "How does {person} like to get work updates?",
            "Which company is {person} interviewing with?",
        ),
    ),
    "family": (
        "semantic",
        (
            "{person}'s {relation} {person2} lives in {city} and works as a {job}.",
            "{person}'s {relation} {person2} has a birthday on {month} {day}.",
            "{person} has {n} children; the youngest, {person2}, started school in {year}.",
            "{person} is marrying {person2} in {city} on {date}.",
            "{person}'s dog {pet_name} is a {n}-year-old {dog_breed}.",
            "{person} calls their {relation} every {weekday} evening.",
            "{person}'s {relation} is moving to {city} in {month}.",
        ),
        (
            "Where does {person}'s {relation} live?",
            "When is the birthday of {person}'s {relation}?",
            "How many kids does {person} have?",
            "When is {person}'s wedding?",
            "What breed is {person}'s dog?",
            "When does {person} call their family?",
        ),
    ),
    "health": (
        "semantic",
        (
            "{person} has taken {medicine} {dose} mg twice a day since {date}.",
            "{person} has an appointment with {doctor} on {date} at {time}.",
            "{person} runs {km} km every {weekday} and wants to run a marathon in {year_ahead}.",
            "{person} sleeps badly after drinking coffee later than {time}.",
            "{person} has {condition} and was told by {doctor} to avoid heavy lifting.",
            "{person}'s resting heart rate was {bpm} bpm at the check-up on {date}.",
            "{person} goes to physiotherapy every {weekday} for {condition}.",
        ),
        (
            "What medication does {person} take?",
            "When is {person}'s doctor appointment?",
            "How far does {person} run?",
            "Why does {person} sleep badly?",
            "What health condition does {person} have?",
            "What was {person}'s heart rate at the last check-up?",
        ),
    ),
    "hobbies": (
        "semantic",
        (
            "{person} has learned the {instrument} for {n} years and practises on {weekday}s.",
            "{person} plays {sport} with {person2} every {weekday} at {time}.",
            "{person}'s favourite band is {band}; they saw them live in {city} in {year}.",
            "{person} is reading {book} and is on chapter {n2}.",
            "{person} supports {team} and never misses a match.",
            "{person} took up {hobby} in {year} and goes every {weekday}.",
            "{person} wants to try {hobby} with their {relation} this {season}.",
        ),
        (
            "What instrument does {person} play?",
            "Who does {person} play {sport} with?",
            "What is {person}'s favourite band?",
            "Which book is {person} reading?",
            "Which team does {person} support?",
            "What hobby did {person} pick up?",
        ),
    ),
    "finance": (
        "semantic",
        (
            "{person} pays {amount_small2} a month in rent for the flat in {city}.",
            "{person} is saving {amount_small} a month for {goal} by {year_ahead}.",
            "{person}'s account at {bank} ends in {last4}; they prefer paying by {pay_method}.",
            "{person} lent {person2} {amount_small} on {date} and expects it back in {month}.",
            "{person} spent {amount_small} on a {item} on {date}, over the {amount_small2} budget.",
            "{person} puts {percent}% of their salary into index funds every month.",
            "{person}'s tax return is due on {date}; their accountant is {person2}.",
        ),
        (
            "How much rent does {person} pay?",
            "What is {person} saving money for?",
            "Which bank does {person} use?",
            "How much did {person} lend to {person2}?",
            "How much of their salary does {person} invest?",
            "When is {person}'s tax return due?",
        ),
    ),
    "shopping": (
        "episodic",
        (
            "{person} wears size {size} shoes and prefers {brand} trainers.",
            "{person} ordered a {item} from {store} on {date}; order number {code}.",
            "{person} would like a {item} for their birthday, ideally in {colour}.",
            "{person} returned the {item} to {store} on {date} because it was the wrong size.",
            "{person} buys groceries at {store} every {weekday}, spending about {amount_small}.",
            "{person} is comparing prices for a {item} and will not pay more than {amount_small}.",
            "{person}'s favourite colour for clothes is {colour}.",
        ),
        (
            "What shoe size does {person} wear?",
            "What did {person} order from {store}?",
            "What does {person} want for their birthday?",
            "Why did {person} return something to {store}?",
            "Where does {person} buy groceries?",
            "What is {person}'s budget for a {item}?",
        ),
    ),
    "tech": (
        "semantic",
        (
            "{person} uses a {device} running {os} and has trouble with {app} crashing.",
            "{person} prefers {editor} and writes mostly {language}.",
            "{person}'s home router was replaced on {date} after the connection kept dropping.",
            "{person} asked to be reminded to back up their {device} every {weekday}.",
            "{person} switched from {app} to {app2} in {month} {year}.",
            "{person} is learning {language} to build a side project about {hobby}.",
            "{person}'s {device} screen cracked on {date}; the repair costs {amount_small}.",
        ),
        (
            "What phone or laptop does {person} use?",
            "Which code editor does {person} prefer?",
            "When was {person}'s router replaced?",
            "Which app did {person} switch to?",
            "What programming language is {person} learning?",
            "How much will {person}'s screen repair cost?",
        ),
    ),
    "schedule": (
        "episodic",
        (
            "{person} has a {event} on {weekday}, {date} at {time} in {city}.",
            "{person} asked to be reminded about the {event} {n} days in advance.",
            "{person} is on holiday from {date} to {date2} and will not read email.",
            "{person}'s {event} with {person2} moved from {weekday} to {weekday2} at {time}.",
            "{person} usually wakes up at {time} and prefers meetings after {time2}.",
            "{person} cancelled the {event} planned for {date}.",
            "{person} has a recurring {event} every {weekday} at {time}.",
        ),
        (
            "What does {person} have on {weekday}?",
            "When is {person} on holiday?",
            "What time does {person} wake up?",
            "When is {person}'s {event}?",
            "Which appointment did {person} cancel?",
            "When was the {event} with {person2} moved to?",
        ),
    ),
}
CATEGORY_NAMES = tuple(CATEGORIES)


@dataclass(frozen=True)
class Item:
    content: str
    type: str
    importance: float
    metadata: dict[str, Any]
    created_at: datetime


class _Slots(dict[str, str]):
    """Fills a template's slots on first use; a slot named twice gets one value."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self._rng = rng

    def __missing__(self, key: str) -> str:
        value = SLOTS[key](self._rng)
        self[key] = value
        return value


def fill(template: str, rng: random.Random) -> str:
    return template.format_map(_Slots(rng))


def _item(rng: random.Random) -> Item:
    category = rng.choice(CATEGORY_NAMES)
    kind, templates, _ = CATEGORIES[category]
    moment = datetime.combine(_date(rng), datetime.min.time(), tzinfo=UTC) + timedelta(
        seconds=rng.randrange(86_400)
    )
    return Item(
        content=fill(rng.choice(templates), rng),
        type=kind,
        importance=round(rng.uniform(0.1, 1.0), 2),
        metadata={
            "category": category,
            "user_id": f"user_{rng.randrange(200):03d}",
            "source": rng.choice(("chat", "email", "calendar", "note")),
            "confidence": round(rng.uniform(0.5, 1.0), 2),
        },
        created_at=moment,
    )


def memories(count: int, *, seed: int = 7) -> list[Item]:
    """`count` memories with distinct contents, the same ones for the same seed."""
    rng = random.Random(seed)
    seen: set[str] = set()
    items: list[Item] = []
    attempts = 0
    while len(items) < count:
        attempts += 1
        if attempts > count * 20:
            raise RuntimeError(f"templates cannot make {count} distinct memories")
        item = _item(rng)
        if item.content not in seen:
            seen.add(item.content)
            items.append(item)
    return items


def questions(count: int, *, seed: int = 11) -> list[str]:
    """`count` distinct natural questions over the same categories and slots."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}  # insertion-ordered set
    for _ in range(count * 50):
        if len(seen) == count:
            return list(seen)
        _, _, templates = CATEGORIES[rng.choice(CATEGORY_NAMES)]
        seen[fill(rng.choice(templates), rng)] = None
    raise RuntimeError(f"templates cannot make {count} distinct questions")
