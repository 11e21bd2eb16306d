"""LineSplitter: complete lines only, partial lines held, over-long lines never held."""

from agent.sources.lines import LineSplitter, LongLine


def test_a_line_split_across_reads_is_joined() -> None:
    splitter = LineSplitter(1024)
    assert splitter.feed(b'{"a":') == ([], [])
    assert splitter.pending == 5
    assert splitter.feed(b"1}\n{") == ([b'{"a":1}'], [])
    assert splitter.pending == 1


def test_a_bom_at_the_start_is_skipped_even_when_split() -> None:
    splitter = LineSplitter(1024)
    assert splitter.feed(b"\xef\xbb") == ([], [])
    assert splitter.feed(b"\xbfx\ny\n") == ([b"x", b"y"], [])
    later = LineSplitter(1024, skip_bom=False)
    assert later.feed(b"\xef\xbb\xbfx\n") == ([b"\xef\xbb\xbfx"], [])


def test_an_over_long_line_keeps_only_its_head_and_length() -> None:
    splitter = LineSplitter(2048)
    assert splitter.feed(b"ok\n" + b"x" * 1500) == ([b"ok"], [])
    for _ in range(100):  # 100 KiB more of the same line: nothing is held
        assert splitter.feed(b"x" * 1024) == ([], [])
        assert len(splitter._buf) == 0
    lines, long_lines = splitter.feed(b"x\nnext\n")
    assert lines == [b"next"]
    assert long_lines == [LongLine(b"x" * 1024, 1500 + 100 * 1024 + 1)]


def test_an_over_long_line_inside_one_chunk_is_reported_and_its_neighbours_kept() -> None:
    splitter = LineSplitter(10)
    lines, long_lines = splitter.feed(b"a\n" + b"y" * 11 + b"\nb\n")
    assert lines == [b"a", b"b"]
    assert long_lines == [LongLine(b"y" * 11, 11)]
    assert splitter.feed(b"z" * 10 + b"\n") == ([b"z" * 10], [])
