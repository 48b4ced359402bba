"""OK-VQA answer post-processing: the stemming of the OK-VQA v1.1 release, as OpenFlamingo does it.

OK-VQA v1.1's ground-truth answers are stemmed, so predictions are stemmed the same way before
`compute_vqa_accuracy`. Each word of the (tokenised, POS-tagged) answer becomes:

1. its entry in `MANUAL_STEMS` if it has one (cases the rules below get wrong, found by
   comparing the dataset's raw and stemmed answers; e.g. "christmas" stays "christmas");
2. otherwise, for a word ending in "ing", its WordNet verb lemma ("running" -> "run");
3. otherwise, for a plural noun (tag NNS or NNPS), `inflection.singularize(word)`;
4. otherwise the word itself.

The words are re-joined with single spaces.

nltk data: the default tokenizer (`nltk.word_tokenize`) needs `punkt_tab`, the default tagger
(`nltk.pos_tag`) `averaged_perceptron_tagger_eng`, and the lemmatizer `wordnet`. The first two
can only be fetched with `nltk.download` (network); WordNet can also be built offline from
Debian's files with `make nltk-data` (then NLTK_DATA=.cache/nltk_data). The tokenizer, tagger
and lemmatizer are injectable, see `OKVQAStemmer`.
"""

from collections.abc import Callable

import inflection
import nltk

from open_flamingo.eval.vqa_metric import postprocess_vqa_generation


def _parse_pairs(text: str) -> dict[str, str]:
    """Parse whitespace-separated "word:stem" pairs into a dict."""
    return dict(pair.split(":") for pair in text.split())


# word -> stem (OK-VQA v1.1's manual corrections).
MANUAL_STEMS = _parse_pairs(
    """
    police:police las:las vegas:vegas yes:yes jeans:jean hell's:hell domino's:domino
    morning:morn clothes:cloth are:are riding:ride leaves:leaf dangerous:danger clothing:cloth
    texting:text kiting:kite firefighters:firefight ties:tie married:married teething:teeth
    gloves:glove tennis:tennis dining:dine directions:direct waves:wave christmas:christmas
    drives:drive pudding:pud coding:code plating:plate quantas:quanta hornes:horn graves:grave
    mating:mate paned:pane alertness:alert sunbathing:sunbath tenning:ten wetness:wet
    urinating:urine sickness:sick braves:brave firefighting:firefight lenses:lens
    reflections:reflect backpackers:backpack eatting:eat designers:design curiousity:curious
    playfulness:play blindness:blind hawke:hawk tomatoe:tomato rodeoing:rodeo
    brightness:bright circuses:circus skateboarders:skateboard staring:stare
    electronics:electron electicity:elect mountainous:mountain socializing:social
    hamburgers:hamburg caves:cave transitions:transit wading:wade creame:cream
    toileting:toilet sautee:saute buildings:build belongings:belong stockings:stock walle:wall
    cumulis:cumuli travelers:travel conducter:conduct browsing:brows pooping:poop
    haircutting:haircut toppings:top hearding:heard sunblocker:sunblock bases:base
    markings:mark mopeds:mope kindergartener:kindergarten pies:pie scrapbooking:scrapbook
    couponing:coupon meetings:meet elevators:elev lowes:low men's:men childrens:children
    shelves:shelve paintings:paint raines:rain paring:pare expressions:express routes:rout
    pease:peas vastness:vast awning:awn boy's:boy drunkenness:drunken teasing:teas
    conferences:confer ripeness:ripe suspenders:suspend earnings:earn reporters:report
    kid's:kid containers:contain corgie:corgi porche:porch microwaves:microwave
    batter's:batter sadness:sad apartments:apart oxygenize:oxygen striping:stripe purring:pure
    professionals:profession piping:pipe farmer's:farmer potatoe:potato emirates:emir
    womens:women veteran's:veteran wilderness:wilder propellers:propel alpes:alp
    charioteering:chariot swining:swine illness:ill crepte:crept adhesives:adhesive
    regent's:regent decorations:decor rabbies:rabbi overseas:oversea travellers:travel
    casings:case smugness:smug doves:dove nationals:nation mustange:mustang ringe:ring
    gondoliere:gondolier vacationing:vacate reminders:remind baldness:bald settings:set
    glaced:glace coniferous:conifer revelations:revel personals:person daughter's:daughter
    badness:bad projections:project polarizing:polar vandalizers:vandal minerals:miner
    protesters:protest controllers:control weddings:wed sometimes:sometime earing:ear
    """
)
PLURAL_NOUN_TAGS = ("NNS", "NNPS")  # Penn Treebank tags (prefixes) of plural nouns
# nltk resource -> the name nltk.download takes, and what needs it.
NLTK_RESOURCES = {
    "tokenizers/punkt_tab/english/": ("punkt_tab", "the tokenizer (nltk.word_tokenize)"),
    "taggers/averaged_perceptron_tagger_eng/": (
        "averaged_perceptron_tagger_eng",
        "the POS tagger (nltk.pos_tag)",
    ),
    "corpora/wordnet": ("wordnet", "the verb lemmatizer (WordNetLemmatizer)"),
}

Tokenizer = Callable[[str], list[str]]
Tagger = Callable[[list[str]], list[tuple[str, str]]]


class MissingNLTKData(LookupError):
    """nltk data needed by the OK-VQA stemmer are not installed."""


def require_nltk_data(*resources: str) -> None:
    """Raise `MissingNLTKData`, naming the download command, unless all `resources` (keys of
    `NLTK_RESOURCES`) are found on nltk's data path (NLTK_DATA and nltk's default folders)."""
    missing = []
    for resource in resources:
        try:
            nltk.data.find(resource)
        except LookupError:
            missing.append(resource)
    if not missing:
        return
    names = [NLTK_RESOURCES[resource][0] for resource in missing]
    downloads = "; ".join(f"nltk.download('{name}')" for name in names)
    needed_for = "; ".join(
        f"{name} for {NLTK_RESOURCES[r][1]}" for name, r in zip(names, missing, strict=True)
    )
    message = (
        f"OK-VQA stemming needs nltk data that is not installed: {needed_for}. Install it with\n"
        f'    python -c "import nltk; {downloads}"\n'
        f"(or put it in a folder named by NLTK_DATA; searched: {', '.join(nltk.data.path)})."
    )
    if "wordnet" in names:
        message += (
            "\nWordNet alone can be built offline from Debian's wordnet-base: `make nltk-data`, "
            "then NLTK_DATA=.cache/nltk_data."
        )
    raise MissingNLTKData(message)


def _wordnet_verb_lemmatizer() -> Callable[[str], str]:
    lemmatizer = nltk.stem.WordNetLemmatizer()
    return lambda word: lemmatizer.lemmatize(word, "v")


class OKVQAStemmer:
    """Stems answers as OK-VQA v1.1 does (see the module docstring).

    Args:
        tokenize: str -> list of words; default `nltk.word_tokenize` (needs punkt_tab).
        pos_tag: list of words -> list of (word, Penn Treebank tag); default `nltk.pos_tag`
            (needs averaged_perceptron_tagger_eng).
        lemmatize_verb: word -> its verb lemma; default WordNet's (needs wordnet).

    The nltk data of the defaults are checked when the stemmer is built, with an error that says
    how to install them.
    """

    def __init__(
        self,
        tokenize: Tokenizer | None = None,
        pos_tag: Tagger | None = None,
        lemmatize_verb: Callable[[str], str] | None = None,
    ):
        needed = [
            resource
            for resource, given in zip(
                NLTK_RESOURCES, (tokenize, pos_tag, lemmatize_verb), strict=True
            )
            if given is None
        ]
        require_nltk_data(*needed)
        self.tokenize = tokenize or nltk.word_tokenize
        self.pos_tag = pos_tag or nltk.pos_tag
        self.lemmatize_verb = lemmatize_verb or _wordnet_verb_lemmatizer()

    def stem_word(self, word: str, tag: str) -> str:
        """One word with its POS tag -> its OK-VQA stem."""
        if word in MANUAL_STEMS:
            return MANUAL_STEMS[word]
        if word.endswith("ing"):
            return self.lemmatize_verb(word)
        if tag.startswith(PLURAL_NOUN_TAGS):
            return inflection.singularize(word)
        return word

    def stem(self, text: str) -> str:
        """Stem every word of `text`: "two dogs running" -> "two dog run" (with nltk's tagger)."""
        tagged = self.pos_tag(self.tokenize(text))
        return " ".join(self.stem_word(word, tag) for word, tag in tagged)


_default_stemmer: OKVQAStemmer | None = None


def postprocess_ok_vqa_generation(text: str, stemmer: OKVQAStemmer | None = None) -> str:
    """A generated OK-VQA answer: cut as `postprocess_vqa_generation`, then stemmed.

    `stemmer` defaults to an `OKVQAStemmer` with nltk's tokenizer, tagger and WordNet (built on
    first use; raises `MissingNLTKData` with the install command if their data are missing).
    """
    global _default_stemmer
    if stemmer is None:
        if _default_stemmer is None:
            _default_stemmer = OKVQAStemmer()
        stemmer = _default_stemmer
    return stemmer.stem(postprocess_vqa_generation(text))
