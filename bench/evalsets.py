"""Evaluation sets beyond the Python FAQ (issue 25), each of a different shape, all read from
Debian packages' files (installed with apt-get when missing) and built deterministically:

- ``sqlite_faq``: another project's FAQ. Debian ``sqlite3-doc``, ``/usr/share/doc/sqlite3/
  faq.html``: each numbered question (``<a name="qN">`` then ``<p><b>(N) question</b></p>``)
  and its answer (the following ``<blockquote>``). Licence: public domain (SQLite's
  documentation; ``debian/*`` GPL-2+), per ``/usr/share/doc/sqlite3-doc/copyright``.
- ``git_manual``: a manual whose sections answer "how do I" questions. Debian ``git-doc``,
  ``/usr/share/doc/git-doc/user-manual.txt`` (AsciiDoc): the sections of its chapters 1 to 6
  (repositories and branches to advanced branch management), each section's own text up to
  the next heading; the questions are written for this set (:data:`GIT_QUESTIONS`, one per
  kept section, in a user's words rather than the heading's). Licence: GPL-2
  (``Files: *``, "Linus Torvalds and others"), per ``/usr/share/doc/git-doc/copyright``.
- ``package_catalogue``: a product catalogue. Debian's own package index
  (``/var/lib/apt/lists/*_Packages.lz4``, decompressed with ``lz4 -dc``), section ``games``:
  one "product" per package (name, version, section, its one-line description, homepage
  and debtags: the index holds no long descriptions, and this machine no Translation-en), the
  questions written from a description's own words ("Which package provides <short description>?").
  The questions repeat the description's words, so this set is lexically easy; many short,
  similar documents are its difficulty. Packages without debtags, those named ``-data``,
  ``-dbg``, ``-doc``, ``-common`` and any whose short description
  another package shares are left out; of the rest (736), sorted by name, every 6th, 120 in
  all, pinned by name in :data:`CATALOGUE_PACKAGES` (chosen on 2026-12-07) so that an update
  of the index cannot change the set. Licence: each package's description is part of its
  ``debian/control``, under that package's own licence (all in Debian main: DFSG-free).
- ``perl_faq``: another project's FAQ, long and code-heavy. Debian ``perl-doc``,
  ``/usr/share/perl/5.36/pod/perlfaq1.pod`` to ``perlfaq9.pod``: each ``=head2`` heading
  that asks a question and its text up to the next heading, formatting codes reduced to
  text; of the 291 with an answer of 20 words or more, every 2nd (120). Licence: the same
  terms as Perl (GPL-1+ or Artistic), per ``/usr/share/doc/perl-doc/copyright``; the FAQ's
  code examples are in the public domain, per the FAQ itself.

Every set comes as :class:`bench.faq.Entry` values (one document and one question each; the
label is the source's title and a running number, nothing of the question) plus off-topic
questions that nothing in the set answers (another domain each).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench import faq
from bench.grounding import OFF_TOPIC

_SPACE = re.compile(r"\s+")
_TAG = re.compile(r"<[^>]+>")


@dataclass(frozen=True)
class EvalSet:
    name: str
    shape: str
    source: str
    licence: str
    entries: list[faq.Entry]
    off_topic: tuple[str, ...]


def _ensure(package: str, path: Path) -> None:
    if path.exists():
        return
    apt = shutil.which("apt-get")
    done = subprocess.run(
        [apt or "apt-get", "install", "-y", package], capture_output=True, text=True
    )
    if done.returncode != 0 or not path.exists():
        raise SystemExit(f"could not install {package} (apt-get install -y {package} as root)")


def _version(package: str) -> str:
    done = subprocess.run(["dpkg-query", "-W", package], capture_output=True, text=True)
    parts = done.stdout.split()
    return parts[-1] if done.returncode == 0 and len(parts) == 2 else "unknown"


def _text(fragment: str) -> str:
    """HTML to text: paragraphs and list items on their own lines, tags dropped."""
    fragment = fragment.replace("\n", " ")
    fragment = re.sub(r"(?i)<(br|/p|/li|/pre|/blockquote|/h\d|/tr|/dd|/dt)\b[^>]*>", "\n", fragment)
    lines = (_SPACE.sub(" ", html.unescape(_TAG.sub("", line))).strip() for line in
             fragment.split("\n"))  # fmt: skip
    return "\n".join(line for line in lines if line)


def python_faq() -> EvalSet:
    """The Python FAQ (``bench/faq.py``), the set Rapport's defaults were chosen on."""
    _pages, entries = faq.load()
    return EvalSet(
        "python_faq",
        "a project's FAQ (9 pages)",
        f"Debian {faq.PACKAGE} {faq.package_version()}, html/faq/*.html",
        "PSF License Agreement (Python documentation), per /usr/share/doc/python3.11-doc/copyright",
        entries,
        OFF_TOPIC,
    )


SQLITE_PACKAGE = "sqlite3-doc"
SQLITE_FAQ = Path("/usr/share/doc/sqlite3/faq.html")
_SQLITE_Q = re.compile(
    r'<a name="q(\d+)"></a>\s*<p><b>\(\d+\)\s*(.*?)</b></p>\s*<blockquote>(.*?)</blockquote>',
    re.S,
)

SQLITE_OFF_TOPIC = (
    "How do I repot an orchid without damaging its roots?",
    "What is the best time of day to see the Milky Way?",
    "How long does it take to walk the Camino de Santiago?",
    "What should I pack for a week of camping in the rain?",
    "How do I descale an espresso machine?",
    "Which wine goes well with grilled salmon?",
    "How many calories does an hour of swimming burn?",
    "What is a good first chess opening for beginners?",
    "How do I stop my glasses from fogging up with a mask?",
    "When is the best season to visit Iceland?",
    "How do I clean silver jewellery at home?",
    "Why do cats purr?",
    "How do I fix a dripping kitchen tap?",
    "What is the difference between baking soda and baking powder?",
    "How long should a newborn sleep each day?",
    "What are the rules of cricket in simple terms?",
    "How do I start learning the guitar as an adult?",
    "What is the tallest mountain in Africa?",
    "How do I remove a tick from a dog?",
    "Who wrote the novel Pride and Prejudice?",
)


def sqlite_faq() -> EvalSet:
    """SQLite's FAQ: each numbered question and its blockquoted answer."""
    _ensure(SQLITE_PACKAGE, SQLITE_FAQ)
    page = SQLITE_FAQ.read_text(encoding="utf-8")
    entries = []
    for _, question, answer in _SQLITE_Q.findall(page):
        text = _text(answer)
        if len(text.split()) >= faq.MIN_ANSWER_WORDS:
            q = _SPACE.sub(" ", html.unescape(_TAG.sub("", question))).strip()
            entries.append(faq.Entry(SQLITE_FAQ.name, "SQLite FAQ", len(entries) + 1, q, text))
    return EvalSet(
        "sqlite_faq",
        "another project's FAQ (1 page)",
        f"Debian {SQLITE_PACKAGE} {_version(SQLITE_PACKAGE)}, {SQLITE_FAQ}",
        "public domain (debian/* GPL-2+), per /usr/share/doc/sqlite3-doc/copyright",
        entries,
        SQLITE_OFF_TOPIC,
    )


GIT_PACKAGE = "git-doc"
GIT_MANUAL = Path("/usr/share/doc/git-doc/user-manual.txt")
GIT_LAST_CHAPTER = "Git concepts"
"""The manual's chapters before this one are the task-oriented ones."""

GIT_QUESTIONS = {
    "How to get a Git repository": "How do I get my own copy of an existing project's repository?",
    "How to check out a different version of a project": (
        "How can I switch my working tree to an older release of the project?"
    ),
    "Understanding History: Commits": "How do I see what a particular commit changed?",
    "Understanding history: commits, parents, and reachability": (
        "What does it mean for one commit to be an ancestor of another?"
    ),
    "Understanding history: History diagrams": "How are commit histories drawn as diagrams?",
    "Understanding history: What is a branch?": (
        "Is a branch the line of development or just a pointer to one commit?"
    ),
    "Manipulating branches": "How do I create, delete or list branches?",
    "Examining an old version without creating a new branch": (
        "What is a detached HEAD and how do I end up with one?"
    ),
    "Examining branches from a remote repository": (
        "How do I look at the branches that came from the repository I cloned?"
    ),
    "Naming branches, tags, and other references": (
        "Where does git keep the names of branches and tags, and how do I spell them in full?"
    ),
    "Updating a repository with git fetch": "How do I bring my clone up to date with upstream?",
    "Fetching branches from other repositories": (
        "How do I track branches from a second repository besides the one I cloned?"
    ),
    "How to use bisect to find a regression": (
        "How can I find which commit introduced a bug between two versions?"
    ),
    "Naming commits": "What are the different ways to refer to a commit, like HEAD^ or a hash?",
    "Creating tags": "How do I mark a commit with a name so I can refer to it later?",
    "Browsing revisions": "How do I list the commits that touched a particular file?",
    "Generating diffs": "How do I produce a patch of the differences between two branches?",
    "Viewing old file versions": "How can I print a file as it was in an older version?",
    "Counting the number of commits on a branch": (
        "How do I count how many commits a branch has that the origin does not?"
    ),
    "Check whether two branches point at the same history": (
        "How can I tell whether two branches are at the same point?"
    ),
    "Find first tagged version including a given fix": (
        "How do I find the first release that contains a particular fix?"
    ),
    "Showing commits unique to a given branch": (
        "How do I see the commits that exist only on one branch and not on any other?"
    ),
    "Creating a changelog and tarball for a software release": (
        "How do I make a release tarball and a changelog from my repository?"
    ),
    "Finding commits referencing a file with given content": (
        "How do I find which commit had a file with exactly some given contents?"
    ),
    "Telling Git your name": "How do I set the name and email address recorded in my commits?",
    "Creating a new repository": "How do I start version control for a brand new project?",
    "How to make a commit": "How do I record my changes, and what is the staging area for?",
    "Creating good commit messages": "How should I format the message when I commit?",
    "Ignoring files": "How do I stop build outputs from showing up as untracked files?",
    "How to merge": "How do I bring the work of another branch into mine?",
    "Resolving a merge": "A merge stopped with conflicts: how do I finish it?",
    "Getting conflict-resolution help during a merge": (
        "Which tools show me both sides of a conflicting hunk while merging?"
    ),
    "Undoing a merge": "How do I throw away a merge I just did?",
    "Fast-forward merges": "Why did a merge not create a merge commit at all?",
    "Fixing mistakes": "I made a mistake in my history: what are my options to correct it?",
    "Fixing a mistake with a new commit": (
        "How do I undo an old commit that others have already pulled?"
    ),
    "Fixing a mistake by rewriting history": (
        "How do I change my last commit before anyone has seen it?"
    ),
    "Checking out an old version of a file": (
        "How do I restore one file to how it was in an earlier commit?"
    ),
    "Temporarily setting aside work in progress": (
        "How do I put my unfinished changes aside to fix something urgent?"
    ),
    "Ensuring good performance": "My repository has become slow and large: how do I compress it?",
    "Checking the repository for corruption": "How do I check my repository for corruption?",
    "Reflogs": "I reset a branch by accident: how do I find where it pointed before?",
    "Examining dangling objects": "How do I get back a commit that no branch points to any more?",
    "Getting updates with git pull": (
        "How do I fetch from upstream and merge it into my branch in one step?"
    ),
    "Submitting patches to a project": (
        "How do I send my commits to a project by email as patches?"
    ),
    "Importing patches to a project": "How do I apply a series of patches received by email?",
    "Public Git repositories": "How do others get my changes if they cannot pull from my computer?",
    "Setting up a public repository": "How do I create a bare repository for publishing my work?",
    "Exporting a Git repository via the Git protocol": (
        "How do I serve my repository with the git daemon?"
    ),
    "Exporting a git repository via HTTP": (
        "How can people clone my repository from a plain web server?"
    ),
    "Pushing changes to a public repository": (
        "How do I upload my branch to the public repository?"
    ),
    "What to do when a push fails": "My push was rejected as not a fast-forward: what now?",
    "Setting up a shared repository": (
        "Can a team share one central repository that everyone pushes to, like CVS?"
    ),
    "Allowing web browsing of a repository": (
        "How can people browse my repository's files and history in a web browser?"
    ),
    "How to get a Git repository with minimal history": (
        "How do I clone only the recent history of a huge project?"
    ),
    "Maintaining topic branches for a Linux subsystem maintainer": (
        "How does a maintainer juggle many topic branches and merge them for testing?"
    ),
    "Creating the perfect patch series": (
        "How do I turn my messy work into a clean series of patches for review?"
    ),
    "Keeping a patch series up to date using git rebase": (
        "How do I move my commits on top of the latest upstream instead of merging?"
    ),
    "Rewriting a single commit": "How do I change a commit in the middle of my branch?",
    "Reordering or selecting from a patch series": (
        "How do I drop or reorder some commits of my series?"
    ),
    "Using interactive rebases": "How does rebase -i let me edit, squash or reorder commits?",
    "Other tools": "Are there other tools for managing a stack of patches?",
    "Problems with rewriting history": (
        "Why is it a problem to rewrite a branch that others have already fetched?"
    ),
    "Why bisecting merge commits can be harder than bisecting linear history": (
        "Why can bisecting be confusing when the history has merges?"
    ),
    "Fetching individual branches": (
        "How do I fetch just one branch from a repository into a name of my choosing?"
    ),
    "git fetch and fast-forwards": "Why would fetch refuse to update a remote-tracking branch?",
    "Forcing git fetch to do non-fast-forward updates": (
        "How do I make fetch update a branch whose history was rewritten upstream?"
    ),
    "Configuring remote-tracking branches": (
        "How do I save a remote's URL and branches in the configuration?"
    ),
}
"""Questions written for this set, keyed by the section heading each is answered by."""

GIT_OFF_TOPIC = (
    "How do I make a sourdough starter from scratch?",
    "What is the safest way to jump-start a car battery?",
    "How far in advance should I book a train across Europe?",
    "What is a normal resting heart rate for an adult?",
    "How do I get rid of aphids on roses?",
    "What are the main causes of the French Revolution?",
    "How do I knit a scarf as a beginner?",
    "What is the best way to store fresh herbs?",
    "How long does a passport renewal take?",
    "Which houseplants are safe for cats?",
    "How much should I tip at a restaurant in the United States?",
    "How do I remove mould from a shower curtain?",
    "What is the boiling point of water at high altitude?",
    "How many players are on a rugby union team?",
    "How do I prepare for a marathon in sixteen weeks?",
    "What is the difference between a crocodile and an alligator?",
    "How do I ask my landlord to fix the heating?",
    "Who discovered penicillin?",
    "How do I pick a ripe avocado?",
    "What should I do if I get stung by a jellyfish?",
)

_LINKGIT = re.compile(r"linkgit:([\w-]+)\[(\d)\]")


def _paragraphs(lines: list[str]) -> str:
    """AsciiDoc lines to text: one paragraph a line, block delimiters dropped."""
    out: list[list[str]] = [[]]
    for line in lines:
        line = _LINKGIT.sub(r"\1(\2)", line).strip()
        if not line or re.fullmatch(r"[-=.+*_]{4,}", line):
            out.append([])
        else:
            out[-1].append(line)
    return "\n".join(" ".join(p) for p in out if p)


_HEADING = re.compile(r"^(=+) (.+?)(?: =+)?$")


def git_manual() -> EvalSet:
    """The Git User Manual's task-oriented sections, each with a written question."""
    _ensure(GIT_PACKAGE, GIT_MANUAL)
    sections: list[tuple[str, list[str]]] = []
    chapter = ""
    for line in GIT_MANUAL.read_text(encoding="utf-8").splitlines():
        match = _HEADING.match(line)
        if match:
            level, title = len(match.group(1)), match.group(2).strip()
            if level == 2:
                chapter = title
            if chapter == GIT_LAST_CHAPTER:
                break
            # "==== Understanding history: Commits" keeps its qualifier in the key.
            sections.append((title, []))
        elif sections and not re.fullmatch(r"\[\[[^\]]*\]\]|\[[a-z]+\]", line.strip()):
            sections[-1][1].append(line)
    entries = []
    used = set()
    for title, lines in sections:
        question = GIT_QUESTIONS.get(title)
        text = _paragraphs(lines)
        if question is None or title in used or len(text.split()) < faq.MIN_ANSWER_WORDS:
            continue
        used.add(title)
        entries.append(faq.Entry(GIT_MANUAL.name, "Git User Manual", len(entries) + 1, question,
                                 text))  # fmt: skip
    return EvalSet(
        "git_manual",
        "a manual's how-do-I sections",
        f"Debian {GIT_PACKAGE} {_version(GIT_PACKAGE)}, {GIT_MANUAL}, chapters 1-6",
        "GPL-2 (Linus Torvalds and others), per /usr/share/doc/git-doc/copyright",
        entries,
        GIT_OFF_TOPIC,
    )


CATALOGUE_SECTION = "games"

CATALOGUE_OFF_TOPIC = (
    "What time does the pharmacy on the high street close?",
    "How do I file my taxes as a freelancer?",
    "Can I return shoes that I have already worn outside?",
    "What is the interest rate on a fixed-term savings account?",
    "How do I apply for a library card?",
    "How long does it take to recover from a sprained ankle?",
    "What vaccinations do I need to travel to Kenya?",
    "How do I set up a direct debit for my electricity bill?",
    "What is the best fertiliser for a lawn in spring?",
    "How do I register a birth?",
    "Where can I recycle old batteries?",
    "How do I make a béchamel sauce?",
    "What are the opening hours of the Louvre?",
    "How often should I service my boiler?",
    "How do I cancel a gym membership?",
    "What is the speed limit on a motorway in France?",
    "How much does it cost to post a letter abroad?",
    "How can I lower my blood pressure naturally?",
    "What should I bring to a job interview?",
    "When do the clocks change for summer time?",
)


def _packages() -> list[dict[str, str]]:
    lists = sorted(Path("/var/lib/apt/lists").glob("*_Packages.lz4"))
    if not lists:
        raise SystemExit("no /var/lib/apt/lists/*_Packages.lz4: run apt-get update")
    out = []
    for path in lists:
        text = subprocess.run(
            ["lz4", "-dc", str(path)], capture_output=True, text=True, check=True
        ).stdout
        for stanza in text.split("\n\n"):
            fields: dict[str, str] = {}
            key = ""
            for line in stanza.splitlines():
                if line.startswith((" ", "\t")) and key:
                    fields[key] += "\n" + line[1:]
                elif ":" in line:
                    key, _, value = line.partition(":")
                    fields[key] = value.strip()
            if "Package" in fields:
                out.append(fields)
    return out


CATALOGUE_PACKAGES = tuple(
    """
    0ad ace-of-penguins alienblaster angrydd asc atomix bastet billard-gl blobandconquer
    blockout2 boswars brutalchess bzflag caveexpress chessx circuslinux crack-attack
    crossfire-client csmash-demosong dangen deutex dopewars drascula-music eboard
    empire-lafe etw fb-music-high filters flare-game fortunes fortunes-debian-hints
    fortunes-ga fortunes-ru freeciv-client-gtk freecol freedroid frotz gamescope gbatnav
    geki3 glaurung gm-assistant gnome-klotski gnome-sudoku gnugo goverlay gravitation
    gtetrinet hannah hexxagon iagno jag kajongg kblackbox ketm killbots kmines kollision
    kraptor ksquares late lierolibre liquidwar-server lskat macopix manaplus mednaffe
    miceamaze minetest-mod-pycraft monopd mousetrap mupen64plus-qt nbsdgames netpanzer
    nexuiz-music njam ogamesim-www openarena-081-maps openarena-server openpref openyahtzee
    pacman4console pathogen pegsolitaire performous-tools pianobooster pioneers planetblupi
    pong2 purity pychess quadrapassel randtype robocode scid sdlfrotz simutrans-makeobj
    slashem sm spring stockfish supertuxkart tdfsb tennix tintin++ torcs trigger-rally
    tuxfootball ufoai vonsh wesnoth wing xabacus xblast-tnt-models xchain xfishtank xinv3d
    xmoto xphoon xscorch
    """.split()
)
"""The catalogue's packages, chosen from bookworm's index by the rule of the module's
docstring and pinned by name, so that an update of the index cannot change the set."""


def package_catalogue() -> EvalSet:
    """One section of Debian's package index as a product catalogue."""
    by_name = {
        p["Package"]: p
        for p in sorted(_packages(), key=lambda p: p["Version"])
        if p.get("Section") == CATALOGUE_SECTION
    }
    missing = [name for name in CATALOGUE_PACKAGES if name not in by_name]
    if missing:
        raise SystemExit(f"not in this machine's package index (bookworm main): {missing}")
    entries = []
    for p in (by_name[name] for name in CATALOGUE_PACKAGES):
        short = p["Description"]
        tags = ", ".join(t.strip().replace("::", ": ") for t in p["Tag"].split(","))
        document = (
            f"{p['Package']} {p['Version']}\nSection: {p['Section']}\n{short}\n"
            f"Homepage: {p.get('Homepage', 'none')}\nTags: {tags}"
        )
        question = f"Which package provides {short[0].lower() + short[1:]}?"
        slug = re.sub(r"[^a-z0-9-]", "-", p["Package"])  # "tintin++" cannot be in an id
        entries.append(faq.Entry(slug, "Games catalogue", len(entries) + 1, question,
                                 document))  # fmt: skip
    return EvalSet(
        "package_catalogue",
        "a product catalogue",
        f"Debian bookworm main Packages index, Section {CATALOGUE_SECTION}, "
        f"{len(entries)} packages pinned by name",
        "each description under its package's licence (Debian main, DFSG-free)",
        entries,
        CATALOGUE_OFF_TOPIC,
    )


PERL_PACKAGE = "perl-doc"
PERL_POD = Path("/usr/share/perl/5.36/pod")
PERL_FAQ_SIZE = 120
_POD_CODE = re.compile(r"[A-Z]<<+\s+(.*?)\s+>>+|[A-Z]<([^<>]*)>", re.S)
_POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/"}

PERL_OFF_TOPIC = (
    "How do I plant a hedge along a garden fence?",
    "What is the best way to learn to swim as an adult?",
    "How long does it take to get a driving licence?",
    "Which cheeses go on a traditional fondue?",
    "How do I get my toddler to sleep through the night?",
    "What should I wear for a winter hike in the mountains?",
    "How do I unblock a bathroom sink without chemicals?",
    "When did the Roman Empire fall?",
    "How much water should a dog drink each day?",
    "What is the best way to keep cut flowers fresh?",
    "How do I prepare for a job interview at a bank?",
    "Why is the sky blue?",
    "How do I make pancakes without eggs?",
    "What documents do I need to open a bank account?",
    "How often should I replace my running shoes?",
    "Which planets can be seen without a telescope?",
    "How do I calm a nervous horse?",
    "What is the difference between a cold and the flu?",
    "How do I paint a room without leaving streaks?",
    "Who composed The Four Seasons?",
)


def _pod_text(paragraph: str) -> str:
    """A POD paragraph's text: formatting codes (perlpod, "Formatting Codes") reduced to
    their text, ``L<text|target>`` to its text, ``E<lt>`` and friends to their character."""

    def plain(match: re.Match[str]) -> str:
        inner = match.group(1) if match.group(1) is not None else match.group(2)
        code = match.group(0)[0]
        if code == "E":
            return _POD_ESCAPES.get(inner, inner)
        if code == "L":
            return inner.split("|", 1)[0].replace('"', "")
        return "" if code in "XZ" else inner

    while _POD_CODE.search(paragraph):
        paragraph = _POD_CODE.sub(plain, paragraph)
    return paragraph


def perl_faq() -> EvalSet:
    """The Perl FAQ (``perlfaq1`` to ``perlfaq9``): each ``=head2`` that asks a question and
    its text up to the next heading, verbatim (code) paragraphs kept as lines."""
    first = PERL_POD / "perlfaq1.pod"
    _ensure(PERL_PACKAGE, first)
    found: list[tuple[str, str, str]] = []
    for part in range(1, 10):
        path = PERL_POD / f"perlfaq{part}.pod"
        title = f"Perl FAQ {part}"
        question = ""
        body: list[str] = []
        for paragraph in [*path.read_text(encoding="utf-8").split("\n\n"), "=head1 end"]:
            if paragraph.startswith(("=head1", "=head2")):
                if question and len(" ".join(body).split()) >= faq.MIN_ANSWER_WORDS:
                    found.append((title, question, "\n".join(body)))
                heading = _SPACE.sub(" ", _pod_text(paragraph.split(None, 1)[1])).strip()
                question = heading if paragraph.startswith("=head2") and "?" in heading else ""
                body = []
            elif question and paragraph.startswith("=item"):
                body.append(_SPACE.sub(" ", _pod_text(paragraph[5:])).strip())
            elif question and not paragraph.startswith("="):
                verbatim = paragraph[:1].isspace()
                text = _pod_text(paragraph)
                body.append(text.strip("\n") if verbatim else _SPACE.sub(" ", text).strip())
    step = max(1, len(found) // PERL_FAQ_SIZE)
    entries = [
        faq.Entry("perlfaq.pod", title, number + 1, question, answer)
        for number, (title, question, answer) in enumerate(found[::step][:PERL_FAQ_SIZE])
    ]
    return EvalSet(
        "perl_faq",
        "another project's FAQ (9 parts)",
        f"Debian {PERL_PACKAGE} {_version(PERL_PACKAGE)}, {PERL_POD}/perlfaq[1-9].pod, "
        f"{len(entries)} of {len(found)} questions (one in {step})",
        "same terms as Perl itself (GPL-1+ or Artistic), per /usr/share/doc/perl-doc/copyright",
        entries,
        PERL_OFF_TOPIC,
    )


SETS = {
    "python_faq": python_faq,
    "sqlite_faq": sqlite_faq,
    "perl_faq": perl_faq,
    "git_manual": git_manual,
    "package_catalogue": package_catalogue,
}
"""Every evaluation set by name, the Python FAQ first."""
