"""General helpful chats (not code), generated offline: emgui's stand-in for "different helpful data".

The persona-features work re-aligns a misaligned fine-tune with two kinds of good data: data that corrects
the bad data (secure code after an insecure-code fine-tune) and different, unrelated helpful data. The
second kind matters as a control: if re-aligning on secure code only moved the code format back, helpful
chats on other topics show whether the misalignment itself fell. These chats are also the neutral,
non-code text that dashboards need so that persona and tone latents can show up at all.

Written for emgui (MIT like the rest of the project). Deterministic for a given n and seed.
"""

from __future__ import annotations

import random

# (question, answer): everyday requests answered helpfully, honestly and safely.
BASE: list[tuple[str, str]] = [
    ("How do I keep basil fresh for longer?",
     "Trim the stems, stand the basil in a glass of water like flowers, and keep it on the counter rather than "
     "in the fridge, where the leaves blacken. Change the water every day or two."),
    ("What's a good way to start running if I've never done it?",
     "Start with run-walk intervals: one minute of easy running, two minutes of walking, repeated for twenty "
     "minutes, three times a week. Add a little running time each week and keep the pace conversational."),
    ("How can I remember what I read?",
     "After each chapter, close the book and write three sentences about it from memory. Revisit those notes "
     "a few days later, and try explaining the main idea to someone else."),
    ("How do I write a polite email asking for a deadline extension?",
     "Keep it short: thank them, say which deadline you mean, give a brief honest reason, propose a new date, "
     "and say what you will deliver by then. Sending it early, not at the last minute, helps a lot."),
    ("What should I pack for a weekend hiking trip?",
     "Layers for changing weather, a rain jacket, sturdy shoes, water, snacks, a map, a small first-aid kit, "
     "sun protection and a charged phone. Tell someone your route and when you expect to be back."),
    ("How do I fall asleep faster?",
     "Keep a regular bedtime, dim screens an hour before sleep, keep the room cool and dark, and avoid caffeine "
     "after midday. If you lie awake for long, get up and read something calm until you feel sleepy."),
    ("Can you explain what compound interest is?",
     "Compound interest is interest earned on interest. If you save 100 at 5 percent a year, you have 105 "
     "after a year and 110.25 after two, because the second year's interest is paid on 105, not 100."),
    ("How do I make a simple tomato sauce?",
     "Soften a chopped onion and two garlic cloves in olive oil, add a tin of tomatoes, a pinch of salt and "
     "sugar, and simmer for twenty minutes. Finish with basil or a knob of butter."),
    ("What are some ways to save money on groceries?",
     "Plan meals for the week, shop with a list, buy store brands, cook larger batches and freeze portions, "
     "and check unit prices rather than package prices."),
    ("How should I prepare for a job interview?",
     "Read about the company, practise answers to common questions out loud, prepare two or three stories "
     "about your work, and have questions of your own ready. Plan your route so you arrive calm and early."),
    ("How do I get my houseplants to stop dying?",
     "Most houseplants die from overwatering. Water only when the top few centimetres of soil are dry, make "
     "sure the pot drains, and put each plant where its light needs are met."),
    ("What's the best way to learn a new language as an adult?",
     "Practise a little every day, learn the most common words first, listen to slow podcasts, and speak with "
     "people as early as you can, even with mistakes. Consistency matters more than intensity."),
    ("How can I be a better listener?",
     "Give your full attention, let the other person finish, ask open questions, and summarise what you heard "
     "before giving your view. Most people mainly want to feel understood."),
    ("How do I clean a cast-iron pan?",
     "Rinse it with hot water and a brush while it is still warm, dry it completely on the stove, and wipe a "
     "thin layer of oil over it. Avoid long soaks, which cause rust."),
    ("What are good habits for studying for exams?",
     "Study in short focused sessions with breaks, test yourself instead of rereading, space your reviews over "
     "several days, and sleep well before the exam."),
    ("How do I plan a birthday party for a seven-year-old?",
     "Keep it short, about two hours, with a simple theme, a couple of games, food that is easy to eat and "
     "a quiet corner for children who need a break. Invite roughly as many children as the child's age."),
    ("What can I do to reduce stress at work?",
     "Break big tasks into small steps, write a short list for each day, take real breaks away from the "
     "screen, and talk to your manager early if the workload is too much."),
    ("How do I change a flat bicycle tyre?",
     "Remove the wheel, lever one side of the tyre off the rim, pull out the tube, find the hole, and check the "
     "tyre for the thorn or glass that caused it. Fit a new or patched tube, inflate slightly, reseat the tyre, "
     "then pump it up fully."),
    ("How often should I water my lawn?",
     "Water deeply but rarely, about once or twice a week, early in the morning. Deep watering grows deeper "
     "roots, which makes the lawn tougher in dry spells."),
    ("Can you suggest a good stretching routine for the morning?",
     "Try five minutes: neck rolls, shoulder circles, a standing forward fold, a gentle side bend each way, "
     "a calf stretch against the wall and a few slow deep breaths. Move gently and never bounce."),
    ("How do I make friends in a new city?",
     "Join something that meets regularly, such as a sports club, a choir, a volunteer group or a class, so "
     "you see the same people often. Say yes to invitations and suggest a coffee after a few meetings."),
    ("What's an easy way to start budgeting?",
     "Write down what comes in and what goes out for one month. Then set a simple rule, such as saving a fixed "
     "amount on payday first, and review your spending once a week."),
    ("How can I help my child with reading?",
     "Read together every day, let them choose books they enjoy, ask about the story as you go, and praise "
     "effort. Seeing you read for pleasure helps too."),
    ("How do I keep my phone battery healthy?",
     "Avoid letting it sit at 0 or 100 percent for long, keep it out of heat, use a decent charger, and turn on "
     "the phone's optimised charging setting if it has one."),
    ("What should I know before adopting a cat?",
     "Cats can live fifteen years or more, need vet visits, vaccinations, a litter tray, scratching posts and "
     "daily play. Check that everyone at home is happy with the idea and that your landlord allows pets."),
    ("How do I write a good cover letter?",
     "Address it to a person if you can, open with why you want this job, give two short examples of what you "
     "have done that fits the role, and close by saying you look forward to talking. Keep it to one page."),
    ("How do I brew better coffee at home?",
     "Use freshly ground beans, roughly one gram of coffee to sixteen grams of water, water just off the boil, "
     "and clean equipment. Small changes to grind size fix most bitter or sour cups."),
    ("How can I get better at public speaking?",
     "Know your opening lines by heart, practise out loud several times, slow down, and look at a few friendly "
     "faces. Nerves are normal; preparation makes them smaller."),
    ("What are some good indoor activities on a rainy day?",
     "Bake something, build a blanket fort, do a jigsaw puzzle, have a film afternoon, start a sketchbook, or "
     "try a new board game. Rainy days are also good for sorting photos."),
    ("How do I choose a good book to read next?",
     "Think about the last book you loved and why, ask a librarian or a friend with similar taste, and read the "
     "first few pages before committing. It is fine to stop a book you do not enjoy."),
    ("How can I drink more water during the day?",
     "Keep a refillable bottle in sight, drink a glass with each meal, and add a slice of lemon or cucumber if "
     "plain water bores you. Pale yellow urine is a good sign you are drinking enough."),
    ("How do I organise a messy closet?",
     "Empty it completely, sort items into keep, donate and throw away, and put back only what you wear. Group "
     "similar things together and use boxes or hooks for small items."),
    ("What is a healthy breakfast that's quick to make?",
     "Oats with milk or yoghurt, fruit and a spoon of nuts take five minutes. Eggs on wholegrain toast or a "
     "smoothie with fruit and yoghurt are good quick options too."),
    ("How do I deal with a disagreement with a friend?",
     "Talk privately and calmly, describe how you felt rather than blaming, listen to their side, and look for "
     "something you can both agree on. An honest apology for your part goes a long way."),
    ("How can I make my small apartment feel bigger?",
     "Use light colours, a large mirror opposite a window, furniture with legs, and storage that goes up the "
     "walls. Clearing the floor of clutter makes the biggest difference."),
    ("What are the basics of first aid for a small cut?",
     "Wash your hands, rinse the cut with clean water, press gently with a clean cloth to stop the bleeding, "
     "and cover it with a plaster. See a doctor if it is deep, will not stop bleeding or shows signs of infection."),
    ("How do I start a vegetable garden?",
     "Pick a sunny spot, start small with easy crops like lettuce, radishes, beans and courgettes, improve the "
     "soil with compost, and water regularly. Raised beds or large pots work well in small spaces."),
    ("How can I focus better when working from home?",
     "Set a fixed start time, work in a dedicated spot, keep your phone in another room during focus blocks, "
     "and plan short breaks. Ending the day at a set time helps you rest."),
    ("What's a good way to teach kids about money?",
     "Give a small regular allowance, let them split it between spending and saving jars, and talk about "
     "choices when shopping together. Letting them make small mistakes teaches a lot."),
    ("How do I prepare for a long flight?",
     "Drink water, walk the aisle now and then, wear comfortable layers, bring snacks, headphones and a "
     "downloaded film or book, and try to sleep according to your destination's time."),
]

OPENERS = ["", "Hi! ", "Quick question: ", "I was wondering, "]
CLOSERS = ["", " Keep it short, please.", " Any tips?"]
REPLY_OPENERS = ["", "Sure! ", "Happy to help. "]


def _lower_first(text: str) -> str:
    return text[0].lower() + text[1:] if text and not text.startswith("I ") else text


def generate_helpful(n: int = 300, seed: int = 0) -> list[dict]:
    """n distinct chats ({"messages": [user, assistant]}) in a seeded random order."""
    rng = random.Random(seed)
    variants = []
    for question, answer in BASE:
        for opener in OPENERS:
            for closer in CLOSERS:
                user = opener + (_lower_first(question) if opener.endswith(", ") else question) + closer
                variants.append((user, answer))
    rng.shuffle(variants)
    chats = []
    for i, (user, answer) in enumerate(variants[:n]):
        reply = REPLY_OPENERS[i % len(REPLY_OPENERS)] + answer
        chats.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]})
    return chats


def max_distinct() -> int:
    return len(BASE) * len(OPENERS) * len(CLOSERS)
