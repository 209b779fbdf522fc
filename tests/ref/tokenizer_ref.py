"""Independent GPT-2 tokenizer reference for tests/test_tokenizer.cpp.

Follows the algorithm of OpenAI's encoder.py (bytes_to_unicode, the pre-tokenising pattern
run by the `regex` module, BPE by merge rank), written from its description. Input text is
raw bytes decoded with errors='surrogateescape', so bytes that are not valid UTF-8 become lone
surrogates (category Cs, neither letter, number nor space) and map back to themselves.

Usage: tokenizer_ref.py TOKENIZER_DIR IN.json OUT.json
  TOKENIZER_DIR holds encoder.json and vocab.bpe; IN.json is an array of hex-encoded byte
  strings; OUT.json gets an array of token id arrays, one per string.
"""
import json
import sys

import regex

PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def byte_to_char():
    """GPT-2's table: printable Latin-1 bytes stand for themselves, others for 256, 257, ..."""
    printable = set(range(ord('!'), ord('~') + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class Tokenizer:
    def __init__(self, folder):
        with open(f'{folder}/encoder.json', encoding='utf-8') as f:
            self.ids = json.load(f)
        with open(f'{folder}/vocab.bpe', encoding='utf-8') as f:
            lines = f.read().split('\n')
        pairs = [tuple(line.split()) for line in lines[1:] if line.strip()]
        self.rank = {pair: r for r, pair in enumerate(pairs)}
        self.chars = byte_to_char()
        self.memo = {}

    def merge_word(self, word):
        if word in self.memo:
            return self.memo[word]
        parts = list(word)
        while len(parts) > 1:
            candidates = {(a, b) for a, b in zip(parts, parts[1:]) if (a, b) in self.rank}
            if not candidates:
                break
            best = min(candidates, key=self.rank.__getitem__)
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.memo[word] = parts
        return parts

    def encode(self, raw):
        text = raw.decode('utf-8', errors='surrogateescape')
        out = []
        for piece in PATTERN.findall(text):
            word = ''.join(self.chars[b] for b in piece.encode('utf-8', errors='surrogateescape'))
            out.extend(self.ids[p] for p in self.merge_word(word))
        return out


def main():
    folder, in_path, out_path = sys.argv[1:4]
    tokenizer = Tokenizer(folder)
    with open(in_path, encoding='utf-8') as f:
        texts = [bytes.fromhex(h) for h in json.load(f)]
    with open(out_path, 'w', encoding='utf-8') as f:
        json.dump([tokenizer.encode(t) for t in texts], f)


if __name__ == '__main__':
    main()
