"""Short English texts, each different from the others, that pass every quality check: the
clean records the tests plant duplicates, near duplicates and bad records among."""

from __future__ import annotations

CLEAN = (
    "The river bends twice before it reaches the old mill, and in spring the water runs so "
    "fast that the children are told to stay on the path and away from the bank.",
    "A hash table keeps its keys in buckets chosen by a hash function, so that finding a key "
    "takes about the same time whether the table holds ten entries or ten million.",
    "When you plant tomatoes, give each one enough room and water them at the base in the "
    "morning, because wet leaves in the evening invite the mould that spoils the crop.",
    "Compound interest grows a saving faster each year, since the interest earned last year "
    "is added to the amount on which the bank pays interest this year.",
    "Our team moved the weekly meeting to Thursday afternoon so that the people in the "
    "other office could join without staying late on a Friday evening.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the "
    "leaves of a plant, and it is the first step of almost every food chain on land.",
    "The museum opens a new room of old maps next month, with a guide who explains how "
    "sailors drew coastlines before there were satellites or even accurate clocks.",
    "If the bread does not rise, the yeast may be too old or the kitchen too cold; try a "
    "warmer place and give the dough another hour before you decide it has failed.",
)
