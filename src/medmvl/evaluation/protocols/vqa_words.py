r"""The VQA-style answer normalisation that LLaVA-Med's and Uni-Med's scoring scripts share.

Both repositories carry the same ``normalize_word`` and glossary (LLaVA-Med
``llava/eval/eval_metrics/glossary.py`` at b9a98a736d2ef05bcf5ff345be6403fb3a664eaf; Uni-Med
``evaluate_metrics.py`` at 5c902a5fecbd1688cdabeb84e11fcf57eaddfa38), derived from the VQA challenge's
evaluation. Its definition, quirks included:

1. For each punctuation mark ``p`` of ``PUNCT`` in turn: when the *original* text has ``p`` followed or
   preceded by a space, or the original text has a digit-comma-digit anywhere, every ``p`` is deleted;
   otherwise every ``p`` becomes a space. (So "x-ray" -> "x ray", but "x-ray - chest" -> "xray chest".)
2. A period not followed by a digit is deleted, at most 32 of them: the reference passes the flag
   ``re.UNICODE`` (32) where ``re.sub`` takes its ``count``. The pattern ``(?!<=\d)`` is a typo for a
   look-behind and never excludes anything, so "5." loses its period and "2.5" keeps it.
3. Lowercase, split on whitespace; number words ``none``/``zero``..``ten`` become digits (so "none" is
   "0"); the articles a/an/the are dropped; contracted spellings get their apostrophe ("dont" ->
   "don't"); the words are joined by one space and every remaining comma is deleted.
"""

from __future__ import annotations

import re
from collections import Counter

PUNCT = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
_CONTRACTIONS = (
    "aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've "
    "couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've "
    "hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's "
    "howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd "
    "itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't "
    "mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've "
    "neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at "
    "'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've "
    "shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd "
    "somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's "
    "someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll "
    "someones=someone's somethingd=something'd somethingd've=something'd've something'dve=something'd've "
    "somethingll=something'll thats=that's thered=there'd thered've=there'd've there'dve=there'd've "
    "therere=there're theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've theyll=they'll "
    "theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've "
    "werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's whered=where'd "
    "wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's "
    "whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't "
    "wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll "
    "yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've "
    "you'dve=you'd've youll=you'll youre=you're youve=you've "
)
CONTRACTIONS = dict(item.split("=", 1) for item in "".join(_CONTRACTIONS).split())
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_DIGIT_COMMA = re.compile(r"(\d)(\,)(\d)")
_PERIOD_COUNT = int(re.UNICODE)  # the reference's count argument


def normalize_word(text: str) -> str:
    """The reference's ``normalize_word`` (module docstring)."""
    out = text
    strip_all = _DIGIT_COMMA.search(text) is not None
    for p in PUNCT:
        if p + " " in text or " " + p in text or strip_all:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out, count=_PERIOD_COUNT)
    words = [NUMBERS.get(w, w) for w in out.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words).replace(",", "")


def word_counts(text: str) -> Counter[str]:
    """The reference's ``split_sentence(text, 1)``: lowercase whitespace words and their counts."""
    return Counter(text.lower().strip().split())


def vqa_f1(prediction: str, reference: str) -> tuple[float, float, float]:
    """The reference's ``calculate_f1score``: ``(f1, precision, recall)`` of normalised words.

    Both texts are normalised (again, when the caller already did). ``tp`` adds the *prediction's* count
    of every shared word, ``fp`` the prediction's count of its other words, ``fn`` the reference's count
    of words the prediction lacks; precision ``tp / (tp + fp)``, recall ``tp / (tp + fn)``. So a repeated
    shared word raises recall: "liver liver liver" against "liver kidney" has recall 3/4. All three are
    0 when either side has no words or nothing is shared.
    """
    pred, ref = word_counts(normalize_word(prediction)), word_counts(normalize_word(reference))
    if not pred or not ref:
        return 0.0, 0.0, 0.0
    tp = sum(n for w, n in pred.items() if w in ref)
    fp = sum(n for w, n in pred.items() if w not in ref)
    fn = sum(n for w, n in ref.items() if w not in pred)
    if tp == 0:
        return 0.0, 0.0, 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall), precision, recall
