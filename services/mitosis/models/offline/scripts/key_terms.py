"""Extract the task's key terms and save them as JSON in the workspace."""

import collections
import json
import pathlib
import re
import sys

# values: the offline model writes the task's values here
TASK_TEXT = "an example task about home batteries"
KIND = "generic"
SUBJECT = "home batteries"
OUTPUT = "notes/key_terms.json"
WORD_PATTERN = r"[^\W_]+"
NOT_TERMS: tuple[str, ...] = ("a", "an", "the")
LIMIT = 8
# end of values


def ranked_terms(text: str) -> list[dict[str, object]]:
    counts: collections.Counter[str] = collections.Counter()
    first_seen: dict[str, int] = {}
    for index, match in enumerate(re.finditer(WORD_PATTERN, text)):
        word = match.group(0).lower()
        if len(word) < 2 or word.isdigit() or word in NOT_TERMS:
            continue
        counts[word] += 1
        first_seen.setdefault(word, index)
    ranked = sorted(counts, key=lambda word: (-counts[word], first_seen[word]))
    return [{"term": word, "count": counts[word]} for word in ranked[:LIMIT]]


def main() -> None:
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    workspace = pathlib.Path.cwd().resolve()
    target = (workspace / OUTPUT).resolve()
    if not target.is_relative_to(workspace):
        sys.exit("refusing to write outside the workspace: " + str(target))
    words = [match.group(0).lower() for match in re.finditer(WORD_PATTERN, TASK_TEXT)]
    terms = ranked_terms(TASK_TEXT)
    record = {
        "task": TASK_TEXT,
        "kind": KIND,
        "subject": SUBJECT,
        "word_count": len(words),
        "distinct_words": len(set(words)),
        "key_terms": terms,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    noun = "word" if len(words) == 1 else "words"
    print(f"Read the task: {len(words)} {noun}, {len(set(words))} distinct.")
    print(f"Subject: {SUBJECT}")
    if terms:
        print("Key terms:")
        for item in terms:
            print(f"  {item['term']:<24} x{item['count']}")
    else:
        print("No key terms found.")
    print(f"Wrote {OUTPUT}")


if __name__ == "__main__":
    main()
