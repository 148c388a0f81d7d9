"""python examples/make_preference_examples.py

Writes the RLHF and DPO example datasets under ``examples/preference/``. The preference is one
anyone can check: **the concise answer wins**. Every pair answers a short question twice, once in
one sentence and once with the same sentence followed by two to four sentences of padding; the
one-sentence answer is always the preferred candidate. The small default base model
(SmolLM2-135M-Instruct) rambles, so a reward model learns "shorter is better" and RLHF or DPO
visibly makes the model stop after its first sentence.

    preference.jsonl      320 pairs   {"input_text", "candidate_0", "candidate_1", "choice"}
                                      (1 line in 8 in the chat form: {"messages": [...], ...})
    heldout_pairs.jsonl    48 pairs   same shape, questions never used elsewhere
    prompts.jsonl          96 prompts {"input_text"} (1 in 8 as {"messages": [...]})
    eval_prompts.jsonl     32 prompts {"input_text"}, held out, on topics where the base model
                                      writes several sentences (it answers "What is the capital
                                      of Peru?" in one already, so such questions are left out)

Questions are built from small fact tables (animals, colours, sums, opposites, definitions,
tips, "why" questions, capitals, sums and differences) and the padding from sentence pools, with a fixed seed and the
standard library only, so rerunning rewrites the same bytes. Which candidate is ``candidate_0``
is random (about half the pairs have ``choice`` 1). No question appears in two files; the script
checks that, the counts and the preference rule after writing, and fails loudly if any breaks.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20250301
OUT = Path(__file__).resolve().parent / "preference"
COUNTS = {"preference": 320, "heldout_pairs": 48, "prompts": 96, "eval_prompts": 32}
EVAL_KINDS = ("animal", "colour", "arithmetic", "definition", "tip", "why")
"""Question kinds the held-out evaluation prompts are drawn from (the base model rambles)."""

# (animal, what it eats, where it lives, what kind of animal it is)
ANIMALS = [
    ("cow", "grass and hay", "fields and farms", "mammal"),
    ("horse", "grass, hay and oats", "fields and stables", "mammal"),
    ("rabbit", "grass and leafy plants", "burrows in meadows", "mammal"),
    ("fox", "small animals, berries and insects", "dens in woods and towns", "mammal"),
    ("owl", "mice and other small animals", "trees and old barns", "bird"),
    ("penguin", "fish and krill", "cold southern coasts", "bird"),
    ("frog", "insects and worms", "ponds and wet grass", "amphibian"),
    ("shark", "fish and seals", "the open ocean", "fish"),
    ("bee", "nectar and pollen", "hives", "insect"),
    ("ant", "seeds, sugar and small insects", "nests in the ground", "insect"),
    ("camel", "desert plants and dry grass", "deserts", "mammal"),
    ("koala", "eucalyptus leaves", "eucalyptus forests in Australia", "marsupial"),
    ("panda", "bamboo", "mountain forests in China", "mammal"),
    ("dolphin", "fish and squid", "warm seas", "mammal"),
    ("eagle", "fish and small mammals", "cliffs and tall trees", "bird"),
    ("squirrel", "nuts and seeds", "trees in parks and woods", "mammal"),
    ("goat", "grass, shrubs and leaves", "hills and farms", "mammal"),
    ("duck", "water plants, seeds and insects", "ponds and rivers", "bird"),
    ("snail", "leaves and rotting plants", "damp gardens", "mollusc"),
    ("tiger", "deer and wild pigs", "forests and grasslands in Asia", "mammal"),
    ("giraffe", "leaves from tall trees", "African savannas", "mammal"),
    ("crocodile", "fish, birds and mammals", "rivers and swamps", "reptile"),
    ("hedgehog", "beetles, worms and slugs", "hedges and gardens", "mammal"),
    ("bat", "insects or fruit", "caves and roofs", "mammal"),
    ("salmon", "small fish and shrimp", "rivers and the sea", "fish"),
    ("parrot", "seeds, nuts and fruit", "tropical forests", "bird"),
    ("turtle", "plants, jellyfish and small animals", "seas, lakes and rivers", "reptile"),
    ("wolf", "deer and other large animals", "forests and tundra", "mammal"),
    ("butterfly", "nectar from flowers", "gardens and meadows", "insect"),
    ("sheep", "grass and clover", "fields and hills", "mammal"),
    ("mouse", "seeds, grain and fruit", "fields, woods and houses", "mammal"),
    ("bear", "berries, fish and roots", "forests and mountains", "mammal"),
    ("lizard", "insects and spiders", "warm, dry places", "reptile"),
    ("octopus", "crabs and shellfish", "rocky sea floors", "mollusc"),
    ("swan", "water plants and grain", "lakes and slow rivers", "bird"),
    ("zebra", "grass", "African plains", "mammal"),
    ("hamster", "seeds, grain and vegetables", "burrows in dry areas", "mammal"),
    ("whale", "krill and small fish", "the oceans", "mammal"),
    ("chicken", "grain, seeds and insects", "farms and backyards", "bird"),
    ("beaver", "bark, twigs and water plants", "lodges on rivers and lakes", "mammal"),
]
ANIMAL_PADDING = [
    "{A}s are found in many parts of the world.",
    "Scientists have studied how they behave for a long time.",
    "Their bodies are well suited to the places where they live.",
    "Young {a}s learn a lot by watching the adults around them.",
    "Many people enjoy watching them in nature or at a zoo.",
    "They play an important part in the balance of their ecosystem.",
    "Their habits can change with the seasons and the weather.",
    "Some of them travel long distances during the year.",
    "There are many interesting facts to learn about them.",
    "Protecting their habitat helps them to survive.",
]

# (thing, its usual colour)
COLOURS = [
    ("a banana", "yellow"),
    ("grass", "green"),
    ("the sky on a clear day", "blue"),
    ("a ripe tomato", "red"),
    ("snow", "white"),
    ("coal", "black"),
    ("an orange", "orange"),
    ("a lemon", "yellow"),
    ("a strawberry", "red"),
    ("a carrot", "orange"),
    ("milk", "white"),
    ("a crow", "black"),
    ("a lime", "green"),
    ("a pumpkin", "orange"),
    ("a fire engine", "red"),
    ("a polar bear's fur", "white"),
    ("an aubergine", "purple"),
    ("a flamingo", "pink"),
    ("chocolate", "brown"),
    ("the sea", "blue"),
    ("a cucumber", "green"),
    ("a school bus in America", "yellow"),
    ("a blueberry", "dark blue"),
    ("a raven", "black"),
    ("a cherry", "dark red"),
    ("sand on a beach", "pale yellow"),
    ("a frog", "green"),
    ("a plum", "purple"),
    ("a cloud", "white"),
    ("tree bark", "brown"),
    ("a daffodil", "yellow"),
    ("a pea", "green"),
    ("ketchup", "red"),
    ("a tennis ball", "yellow-green"),
    ("an egg yolk", "yellow"),
    ("a coconut shell", "brown"),
    ("a mint leaf", "green"),
    ("a ruby", "red"),
    ("a sapphire", "blue"),
    ("an emerald", "green"),
]
COLOUR_PADDING = [
    "The exact shade can change a little with the light.",
    "Some varieties have slightly different shades.",
    "People often describe it this way in books and pictures.",
    "Colour is one of the first things we notice about an object.",
    "Artists mix several paints to get a colour like that.",
    "The colour comes from the way it reflects light.",
    "Over time the colour may fade or darken.",
    "Children usually learn this colour at an early age.",
]

# (word, its opposite)
OPPOSITES = [
    ("hot", "cold"),
    ("big", "small"),
    ("happy", "sad"),
    ("fast", "slow"),
    ("light", "dark"),
    ("up", "down"),
    ("open", "closed"),
    ("early", "late"),
    ("full", "empty"),
    ("loud", "quiet"),
    ("hard", "soft"),
    ("young", "old"),
    ("strong", "weak"),
    ("rich", "poor"),
    ("wet", "dry"),
    ("tall", "short"),
    ("heavy", "light"),
    ("clean", "dirty"),
    ("brave", "afraid"),
    ("begin", "end"),
    ("win", "lose"),
    ("push", "pull"),
    ("inside", "outside"),
    ("buy", "sell"),
    ("remember", "forget"),
    ("accept", "refuse"),
    ("arrive", "leave"),
    ("asleep", "awake"),
    ("cheap", "expensive"),
    ("thick", "thin"),
    ("smooth", "rough"),
    ("sweet", "sour"),
    ("true", "false"),
    ("friend", "enemy"),
    ("north", "south"),
    ("day", "night"),
    ("above", "below"),
    ("laugh", "cry"),
    ("near", "far"),
    ("first", "last"),
]
WORD_PADDING = [
    "Words with opposite meanings are called antonyms.",
    "Both words are common in everyday English.",
    "You can use them to describe contrasting situations.",
    "Learning pairs like this helps to build your vocabulary.",
    "The meaning can shift slightly depending on the context.",
    "Many languages have a similar pair of words.",
    "Writers often put the two words side by side for effect.",
    "Teachers use pairs like these in spelling and reading lessons.",
]

# (thing, one-sentence definition)
DEFINITIONS = [
    ("volcano", "A volcano is an opening in the Earth's crust where molten rock comes out."),
    ("glacier", "A glacier is a huge, slow-moving river of ice."),
    ("desert", "A desert is a place that gets very little rain."),
    ("planet", "A planet is a large body that moves around a star."),
    ("library", "A library is a place where you can borrow books."),
    ("thermometer", "A thermometer is a tool that measures temperature."),
    ("bridge", "A bridge is a structure that lets people cross over a river, road or valley."),
    ("compass", "A compass is a tool that shows which way is north."),
    ("rainbow", "A rainbow is an arc of colours made when sunlight shines through raindrops."),
    ("island", "An island is a piece of land with water all around it."),
    ("vaccine", "A vaccine is a medicine that trains the body to fight a disease."),
    ("recipe", "A recipe is a set of instructions for cooking a dish."),
    ("battery", "A battery is a device that stores electrical energy."),
    ("calendar", "A calendar is a chart that shows the days, weeks and months of a year."),
    ("telescope", "A telescope is an instrument that makes distant objects look closer."),
    ("museum", "A museum is a building where interesting objects are kept and shown."),
    ("noun", "A noun is a word that names a person, place or thing."),
    ("verb", "A verb is a word that describes an action or a state."),
    ("fossil", "A fossil is the preserved remains or trace of an ancient living thing."),
    ("harbour", "A harbour is a sheltered area of water where ships can stay safely."),
    ("orchestra", "An orchestra is a large group of musicians who play together."),
    ("passport", "A passport is an official document that lets you travel abroad."),
    ("microscope", "A microscope is an instrument that makes tiny things look bigger."),
    ("budget", "A budget is a plan for how to spend money."),
    ("continent", "A continent is one of the Earth's seven large areas of land."),
    ("hurricane", "A hurricane is a very strong storm with fast, spinning winds."),
    ("magnet", "A magnet is an object that pulls iron and steel towards it."),
    ("poem", "A poem is a piece of writing that uses rhythm and imagery."),
    ("satellite", "A satellite is an object that travels in orbit around a planet."),
    ("password", "A password is a secret word that protects an account."),
    ("canyon", "A canyon is a deep valley with steep sides, often cut by a river."),
    ("skeleton", "A skeleton is the frame of bones that supports a body."),
    ("dictionary", "A dictionary is a book that lists words and explains their meanings."),
    ("lighthouse", "A lighthouse is a tower with a bright light that guides ships."),
    ("election", "An election is a vote to choose a person for an official job."),
    ("tide", "A tide is the regular rise and fall of the sea."),
    ("seed", "A seed is the small part of a plant that can grow into a new plant."),
    ("keyboard", "A keyboard is a set of keys used to type on a computer."),
    ("map", "A map is a drawing of an area that shows where things are."),
    ("cactus", "A cactus is a plant with thick stems that stores water."),
]
DEFINITION_PADDING = [
    "There are many different kinds around the world.",
    "People have known about them for a very long time.",
    "You can read more about them in an encyclopedia.",
    "They are often mentioned in science and geography lessons.",
    "Each one is a little different from the others.",
    "The word comes from older languages.",
    "They can be very useful in everyday life.",
    "Experts continue to study them and learn new things.",
    "Some famous examples attract many visitors every year.",
]

# (activity, one-sentence tip, its own supporting sentences)
TIPS = [
    (
        "sleeping better",
        "Go to bed and get up at the same time every day.",
        [
            "A regular rhythm helps your body know when to rest.",
            "Avoid screens for an hour before bed.",
            "Keep your bedroom cool, dark and quiet.",
        ],
    ),
    (
        "studying",
        "Study in short sessions with a break after each one.",
        [
            "Twenty-five minutes of focus followed by five minutes of rest works well.",
            "Put your phone in another room.",
            "Test yourself instead of rereading your notes.",
        ],
    ),
    (
        "saving money",
        "Put a fixed amount aside as soon as you are paid.",
        [
            "Treat savings like a bill that must be paid.",
            "Track what you spend for a month.",
            "Cancel subscriptions you no longer use.",
        ],
    ),
    (
        "learning a language",
        "Practise a little every day rather than a lot once a week.",
        [
            "Short daily practice is easier to remember.",
            "Listen to songs and podcasts in the language.",
            "Speak with native speakers whenever you can.",
        ],
    ),
    (
        "staying hydrated",
        "Carry a water bottle and sip from it through the day.",
        [
            "Thirst is not always a reliable signal.",
            "Drink a glass of water with every meal.",
            "Eat fruit and vegetables that contain water.",
        ],
    ),
    (
        "running a first 5k",
        "Start slowly and mix running with walking.",
        [
            "Build up the running parts a little each week.",
            "Wear comfortable shoes that fit well.",
            "Rest days matter as much as training days.",
        ],
    ),
    (
        "writing an email",
        "Put the main point in the first sentence.",
        [
            "Busy readers may not read to the end.",
            "Use a clear subject line.",
            "Keep paragraphs short and polite.",
        ],
    ),
    (
        "cooking rice",
        "Rinse the rice and use about twice as much water as rice.",
        [
            "Rinsing removes extra starch.",
            "Keep the lid on while it simmers.",
            "Let it rest for a few minutes before serving.",
        ],
    ),
    (
        "keeping plants alive",
        "Water them only when the top of the soil feels dry.",
        [
            "Too much water is a common cause of problems.",
            "Give them enough light for their type.",
            "Check the leaves for pests now and then.",
        ],
    ),
    (
        "public speaking",
        "Practise your talk out loud several times.",
        [
            "Rehearsing helps the words come naturally.",
            "Look at friendly faces in the audience.",
            "Speak a little more slowly than feels normal.",
        ],
    ),
    (
        "waking up early",
        "Put your alarm on the other side of the room.",
        [
            "Getting up to switch it off wakes you.",
            "Open the curtains to let in light.",
            "Go to bed earlier the night before.",
        ],
    ),
    (
        "reading more",
        "Carry a book with you wherever you go.",
        [
            "Short waits become reading time.",
            "Choose books you actually enjoy.",
            "Set a small daily page goal.",
        ],
    ),
    (
        "a job interview",
        "Prepare short stories that show your skills.",
        [
            "Concrete examples are more convincing than claims.",
            "Research the company beforehand.",
            "Have a few questions ready to ask.",
        ],
    ),
    (
        "staying focused",
        "Work on one task at a time.",
        [
            "Switching between tasks wastes energy.",
            "Turn off notifications while you work.",
            "Write down distracting thoughts for later.",
        ],
    ),
    (
        "packing a suitcase",
        "Roll your clothes instead of folding them.",
        [
            "Rolled clothes take less space.",
            "Put heavy items at the bottom.",
            "Make a list before you start.",
        ],
    ),
    (
        "making friends in a new city",
        "Join a club or class about something you enjoy.",
        [
            "Shared interests make conversation easy.",
            "Say yes to invitations.",
            "Be patient, friendships take time.",
        ],
    ),
    (
        "reducing stress",
        "Take a short walk outside when you feel tense.",
        [
            "Movement and fresh air calm the body.",
            "Breathe slowly and deeply.",
            "Talk to someone you trust.",
        ],
    ),
    (
        "remembering names",
        "Repeat a person's name when you are introduced.",
        [
            "Saying it aloud helps it stick.",
            "Link the name to something memorable.",
            "Write it down after the conversation.",
        ],
    ),
    (
        "keeping a tidy desk",
        "Clear your desk for two minutes at the end of each day.",
        [
            "Small daily habits prevent big messes.",
            "Give every item a fixed place.",
            "Throw away papers you do not need.",
        ],
    ),
    (
        "taking better photos",
        "Keep the sun behind you when you take a picture.",
        [
            "Good light makes the biggest difference.",
            "Hold the camera steady.",
            "Get closer to your subject.",
        ],
    ),
    (
        "eating healthier",
        "Fill half your plate with vegetables.",
        [
            "Vegetables add fibre and vitamins.",
            "Cook at home more often.",
            "Drink water instead of sugary drinks.",
        ],
    ),
    (
        "learning to swim",
        "Practise floating before you try strokes.",
        [
            "Floating builds confidence in the water.",
            "Take lessons from a qualified teacher.",
            "Swim in a pool with a lifeguard.",
        ],
    ),
    (
        "growing tomatoes",
        "Plant them in the sunniest spot you have.",
        [
            "Tomatoes need plenty of sun to ripen.",
            "Water them deeply and regularly.",
            "Support the stems with a stake.",
        ],
    ),
    (
        "driving in the rain",
        "Slow down and leave extra space in front of you.",
        ["Wet roads make braking take longer.", "Turn on your headlights.", "Avoid sudden turns."],
    ),
    (
        "painting a room",
        "Cover the floor and tape the edges before you start.",
        [
            "Preparation saves time cleaning up.",
            "Use two thin coats instead of one thick one.",
            "Keep the room aired while it dries.",
        ],
    ),
    (
        "learning to code",
        "Build a small project you care about.",
        [
            "A real goal keeps you motivated.",
            "Read other people's code.",
            "Fix one error at a time.",
        ],
    ),
    (
        "sleeping on a plane",
        "Bring a neck pillow and an eye mask.",
        [
            "They block light and support your head.",
            "Choose a window seat.",
            "Avoid coffee before the flight.",
        ],
    ),
    (
        "keeping warm in winter",
        "Wear several thin layers instead of one thick one.",
        [
            "Layers trap warm air between them.",
            "Keep your head and hands covered.",
            "Drink warm drinks.",
        ],
    ),
    (
        "making good coffee",
        "Use freshly ground beans.",
        [
            "Ground coffee loses flavour quickly.",
            "Use water just off the boil.",
            "Clean your equipment regularly.",
        ],
    ),
    (
        "meeting a deadline",
        "Split the work into small tasks with their own dates.",
        [
            "Small steps are easier to start.",
            "Do the hardest part first.",
            "Tell people early if you need help.",
        ],
    ),
]
TIP_PADDING = [
    "Everyone is different, so find what works for you.",
    "Small changes can make a big difference over time.",
    "It may take a few weeks before you notice the results.",
    "Many experts give similar advice.",
    "Be patient with yourself while you build the habit.",
    "You can also ask friends what has worked for them.",
]

# (question, one-sentence answer, its own supporting sentences)
WHYS = [
    (
        "Why is the sky blue?",
        "Air scatters blue sunlight more than other colours.",
        [
            "Sunlight contains every colour of light.",
            "Blue light has a short wavelength.",
            "This effect is called Rayleigh scattering.",
        ],
    ),
    (
        "Why do leaves change colour in autumn?",
        "Trees stop making green chlorophyll, so other colours show.",
        [
            "Shorter days signal the change.",
            "Yellow and orange pigments were there all along.",
            "Red colours come from new pigments made in autumn.",
        ],
    ),
    (
        "Why do we have seasons?",
        "The Earth's axis is tilted as it travels around the Sun.",
        [
            "The tilt changes how directly sunlight hits each place.",
            "Summer comes when your half leans towards the Sun.",
            "The distance to the Sun matters much less.",
        ],
    ),
    (
        "Why does ice float?",
        "Ice is less dense than liquid water.",
        [
            "Water molecules spread out as they freeze.",
            "This is unusual for a solid.",
            "Floating ice keeps lakes from freezing solid.",
        ],
    ),
    (
        "Why do cats purr?",
        "Cats purr mostly when they are relaxed or want comfort.",
        [
            "The sound comes from muscles in the voice box.",
            "Mother cats purr to their kittens.",
            "Some cats also purr when they are hurt.",
        ],
    ),
    (
        "Why do we yawn?",
        "Yawning may help cool the brain and keep us alert.",
        [
            "It often happens when we are tired or bored.",
            "Yawns are contagious between people.",
            "Scientists still debate the exact reason.",
        ],
    ),
    (
        "Why is the sea salty?",
        "Rivers carry dissolved minerals into the sea, and they stay when the water evaporates.",
        [
            "Rocks slowly release salts into rainwater.",
            "This has happened for millions of years.",
            "Vents on the sea floor add minerals too.",
        ],
    ),
    (
        "Why do birds migrate?",
        "Birds migrate to find food and good places to raise their young.",
        [
            "Winter makes food hard to find.",
            "Longer days in the north help chicks grow.",
            "Many birds follow the same routes every year.",
        ],
    ),
    (
        "Why do onions make you cry?",
        "Cutting an onion releases a gas that irritates your eyes.",
        [
            "The eyes make tears to wash it away.",
            "Chilling the onion first helps.",
            "A sharp knife damages fewer cells.",
        ],
    ),
    (
        "Why does the Moon change shape?",
        "We see different parts of its sunlit side as it orbits the Earth.",
        [
            "The Moon does not make its own light.",
            "A full cycle takes about a month.",
            "These shapes are called phases.",
        ],
    ),
    (
        "Why do we need sleep?",
        "Sleep lets the body and brain rest and repair.",
        [
            "Memories are sorted during sleep.",
            "Lack of sleep affects mood.",
            "Adults need about seven to nine hours.",
        ],
    ),
    (
        "Why do stars twinkle?",
        "Moving air bends their light on its way to our eyes.",
        [
            "The atmosphere is never perfectly still.",
            "Planets twinkle less because they look bigger.",
            "In space, stars do not twinkle.",
        ],
    ),
    (
        "Why is exercise good for you?",
        "Exercise strengthens the heart, muscles and bones.",
        ["It also improves mood.", "Regular activity helps you sleep.", "Even short walks count."],
    ),
    (
        "Why do bread doughs rise?",
        "Yeast makes gas bubbles that get trapped in the dough.",
        [
            "Yeast feeds on sugars in the flour.",
            "Warmth speeds it up.",
            "Kneading makes the dough stretchy.",
        ],
    ),
    (
        "Why do we have leap years?",
        "A year is about a quarter of a day longer than 365 days.",
        [
            "The extra day keeps the calendar in step with the seasons.",
            "It is added to February.",
            "Most years divisible by four are leap years.",
        ],
    ),
    (
        "Why do plants need sunlight?",
        "Plants use sunlight to make their food.",
        [
            "The process is called photosynthesis.",
            "It takes place in the leaves.",
            "Plants also release oxygen.",
        ],
    ),
    (
        "Why does metal feel cold?",
        "Metal carries heat away from your hand quickly.",
        [
            "It may be the same temperature as wood nearby.",
            "Your skin senses heat loss, not temperature.",
            "This is called thermal conductivity.",
        ],
    ),
    (
        "Why do we get goosebumps?",
        "Tiny muscles pull the hairs on our skin upright.",
        [
            "It happens when we are cold or scared.",
            "In furry animals it traps warm air.",
            "In humans it is mostly a leftover reflex.",
        ],
    ),
    (
        "Why does thunder follow lightning?",
        "Light travels much faster than sound.",
        [
            "Lightning heats the air, which expands with a bang.",
            "Counting the seconds tells you how far away it is.",
            "About three seconds is one kilometre.",
        ],
    ),
    (
        "Why do apples turn brown?",
        "Cut apple reacts with oxygen in the air.",
        [
            "An enzyme in the fruit drives the reaction.",
            "Lemon juice slows it down.",
            "The fruit is still safe to eat.",
        ],
    ),
    (
        "Why do we sneeze?",
        "Sneezing clears things that irritate the inside of the nose.",
        [
            "Dust and pollen are common causes.",
            "A sneeze can be very fast.",
            "Bright light makes some people sneeze.",
        ],
    ),
    (
        "Why do some animals hibernate?",
        "Hibernating saves energy when food is scarce in winter.",
        [
            "Their heart rate slows down.",
            "They live on stored fat.",
            "Bears, bats and hedgehogs hibernate.",
        ],
    ),
    (
        "Why is recycling useful?",
        "Recycling turns used materials into new products and saves resources.",
        [
            "It reduces waste sent to landfill.",
            "Making things from recycled material often uses less energy.",
            "Sorting your rubbish helps.",
        ],
    ),
    (
        "Why do we wear seat belts?",
        "Seat belts hold you in place in a sudden stop.",
        [
            "They spread the force across the strong parts of the body.",
            "They prevent many serious injuries.",
            "Most countries require them by law.",
        ],
    ),
    (
        "Why do ships float?",
        "A ship pushes aside water that weighs as much as the ship.",
        [
            "This is Archimedes' principle.",
            "The hull holds a lot of air.",
            "Too much cargo can make a ship sink.",
        ],
    ),
    (
        "Why do our fingers wrinkle in water?",
        "Nerves make blood vessels in the fingertips narrow.",
        [
            "It may help us grip wet things.",
            "It happens after a few minutes.",
            "The wrinkles go away when the skin dries.",
        ],
    ),
    (
        "Why do dogs wag their tails?",
        "Dogs wag their tails to communicate their feelings.",
        [
            "A loose wag usually means happiness.",
            "A stiff wag can mean alertness.",
            "The direction of the wag matters too.",
        ],
    ),
    (
        "Why does the wind blow?",
        "Air moves from areas of high pressure to areas of low pressure.",
        [
            "The Sun heats the ground unevenly.",
            "Warm air rises and cooler air moves in.",
            "The Earth's spin curves the winds.",
        ],
    ),
    (
        "Why do we have fingerprints?",
        "The ridges on our fingertips help us grip and feel.",
        [
            "Every person's pattern is unique.",
            "They form before birth.",
            "Police use them to identify people.",
        ],
    ),
    (
        "Why do mosquitoes bite?",
        "Female mosquitoes need blood to make their eggs.",
        [
            "Males feed only on nectar.",
            "They find people by the carbon dioxide we breathe out.",
            "The itch comes from their saliva.",
        ],
    ),
]
WHY_PADDING = [
    "Scientists have studied this for many years.",
    "It is a question many children ask.",
    "There are several related effects as well.",
    "You can see it for yourself if you look closely.",
    "Some details are still being researched.",
    "The full explanation involves a bit of physics and biology.",
]

# (country, capital)
CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"),
    ("Brazil", "Brasília"),
    ("Egypt", "Cairo"),
    ("Norway", "Oslo"),
    ("Spain", "Madrid"),
    ("Italy", "Rome"),
    ("Germany", "Berlin"),
    ("Australia", "Canberra"),
    ("India", "New Delhi"),
    ("Mexico", "Mexico City"),
    ("Argentina", "Buenos Aires"),
    ("Portugal", "Lisbon"),
    ("Greece", "Athens"),
    ("Poland", "Warsaw"),
    ("Sweden", "Stockholm"),
    ("Ireland", "Dublin"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Chile", "Santiago"),
    ("Peru", "Lima"),
    ("Morocco", "Rabat"),
    ("Finland", "Helsinki"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("Turkey", "Ankara"),
    ("Ghana", "Accra"),
    ("Cuba", "Havana"),
]
CAPITAL_PADDING = [
    "{cap} is home to many museums and historic buildings.",
    "Many people visit {cap} every year to see its landmarks.",
    "The city has a long history and a busy centre.",
    "It is an important place for the government of {country}.",
    "Visitors often enjoy its food, parks and markets.",
    "Like most capitals, it has grown a lot over the last century.",
]

ARITHMETIC_PADDING = [
    "You can check this by counting from {a}.",
    "Addition and subtraction are two of the four basic operations of arithmetic.",
    "Children usually learn sums like this in primary school.",
    "Writing the numbers in columns can help with larger sums.",
    "A number line is a good way to picture it.",
    "Mental arithmetic gets easier with practice.",
]


def questions(rng: random.Random) -> list[dict]:
    """Every question with its one-sentence answer and the pool its padding is drawn from."""
    items = []
    for a, food, home, kind in ANIMALS:
        pad = [s.format(a=a, A=a.capitalize()) for s in ANIMAL_PADDING]
        items += [
            dict(kind="animal", q=f"What does a {a} eat?", a=f"A {a} mostly eats {food}.", pad=pad),
            dict(
                kind="animal",
                q=f"Where does a {a} live?",
                a=f"A {a} usually lives in {home}.",
                pad=pad,
            ),
            dict(
                kind="animal", q=f"What kind of animal is a {a}?", a=f"A {a} is a {kind}.", pad=pad
            ),
        ]
    for thing, colour in COLOURS:
        answer = f"{thing[0].upper()}{thing[1:]} is usually {colour}."
        items.append(
            dict(kind="colour", q=f"What colour is {thing}?", a=answer, pad=COLOUR_PADDING)
        )
    for word, opposite in OPPOSITES:
        items.append(
            dict(
                kind="opposite",
                q=f"What is the opposite of {word}?",
                a=f"The opposite of {word} is {opposite}.",
                pad=WORD_PADDING,
            )
        )
    for thing, definition in DEFINITIONS:
        article = "an" if thing[0] in "aeiou" else "a"
        items.append(
            dict(
                kind="definition",
                q=f"What is {article} {thing}?",
                a=definition,
                pad=DEFINITION_PADDING,
            )
        )
    for activity, tip, own in TIPS:
        items.append(
            dict(
                kind="tip",
                q=f"Give me a tip for {activity}.",
                a=tip,
                pad=own + TIP_PADDING,
                own=own,
            )
        )
    for question, answer, own in WHYS:
        items.append(dict(kind="why", q=question, a=answer, pad=own + WHY_PADDING, own=own))
    for country, cap in CAPITALS:
        pad = [s.format(cap=cap, country=country) for s in CAPITAL_PADDING]
        items.append(
            dict(
                kind="capital",
                q=f"What is the capital of {country}?",
                a=f"The capital of {country} is {cap}.",
                pad=pad,
            )
        )
    sums: set[tuple[int, str, int]] = set()
    while len(sums) < 180:
        x, op, y = rng.randint(12, 60), rng.choice(["plus", "minus"]), rng.randint(2, 11)
        sums.add((x, op, y))
    for x, op, y in sorted(sums):
        pad = [s.format(a=x) for s in ARITHMETIC_PADDING]
        result = x + y if op == "plus" else x - y
        items.append(
            dict(
                kind="arithmetic",
                q=f"What is {x} {op} {y}?",
                a=f"{x} {op} {y} is {result}.",
                pad=pad,
            )
        )
    return items


def padded(item: dict, rng: random.Random) -> str:
    """The answer followed by 2-4 padding sentences (the question's own first, when it has
    some, then the generic pool)."""
    n = rng.randint(2, 4)
    own = item.get("own", [])
    generic = [s for s in item["pad"] if s not in own]
    chosen = rng.sample(own, min(len(own), rng.randint(1, 2))) if own else []
    chosen += rng.sample(generic, n - len(chosen))
    return " ".join([item["a"], *chosen])


def pair_line(item: dict, rng: random.Random, chat: bool) -> dict:
    short, long = item["a"], padded(item, rng)
    first_short = rng.random() < 0.5
    line = (
        {"messages": [{"role": "user", "content": item["q"]}]}
        if chat
        else {"input_text": item["q"]}
    )
    line.update(
        candidate_0=short if first_short else long,
        candidate_1=long if first_short else short,
        choice=0 if first_short else 1,
    )
    return line


def prompt_line(item: dict, chat: bool) -> dict:
    return (
        {"messages": [{"role": "user", "content": item["q"]}]}
        if chat
        else {"input_text": item["q"]}
    )


def main() -> None:
    rng = random.Random(SEED)
    items = questions(rng)
    rng.shuffle(items)
    # Held-out evaluation prompts first, from the kinds where the base model rambles; then the
    # rest is dealt out to the other files, so no question appears twice.
    eval_items = [i for i in items if i["kind"] in EVAL_KINDS][: COUNTS["eval_prompts"]]
    rest = [i for i in items if i not in eval_items]
    heldout = rest[: COUNTS["heldout_pairs"]]
    prompts = rest[COUNTS["heldout_pairs"] : COUNTS["heldout_pairs"] + COUNTS["prompts"]]
    start = COUNTS["heldout_pairs"] + COUNTS["prompts"]
    pairs = rest[start : start + COUNTS["preference"]]
    if len(pairs) < COUNTS["preference"]:
        raise SystemExit(f"only {len(pairs)} questions left for preference pairs")

    files = {
        "preference": [pair_line(it, rng, chat=n % 8 == 7) for n, it in enumerate(pairs)],
        "heldout_pairs": [pair_line(it, rng, chat=False) for it in heldout],
        "prompts": [prompt_line(it, chat=n % 8 == 7) for n, it in enumerate(prompts)],
        "eval_prompts": [prompt_line(it, chat=False) for it in eval_items],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        (OUT / f"{name}.jsonl").write_text(text, encoding="utf-8")
    check()


def check() -> None:
    """Read every file back: counts, the preference rule, no question in two files."""
    seen: dict[str, str] = {}
    for name, count in COUNTS.items():
        rows = [json.loads(x) for x in (OUT / f"{name}.jsonl").read_text("utf-8").splitlines()]
        assert len(rows) == count, (name, len(rows))
        for row in rows:
            question = row.get("input_text") or row["messages"][-1]["content"]
            assert question not in seen, f"{question!r} in {name} and {seen.get(question)}"
            seen[question] = name
            if "choice" in row:
                chosen = row[f"candidate_{row['choice']}"]
                rejected = row[f"candidate_{1 - row['choice']}"]
                assert rejected.startswith(chosen) and len(rejected) > len(chosen), row
        if name in ("preference", "heldout_pairs"):
            ones = sum(r["choice"] for r in rows)
            assert 0.35 < ones / count < 0.65, (name, ones)
    print(f"wrote {', '.join(f'{n}: {c}' for n, c in COUNTS.items())} to {OUT}")


if __name__ == "__main__":
    main()
