from consortium.llm.stops import StopMatcher


def feed_all(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    m = StopMatcher(stops)
    out = []
    stopped = False
    for p in pieces:
        text, stopped = m.feed(p)
        out.append(text)
        if stopped:
            break
    if not stopped:
        out.append(m.flush())
    return "".join(out), stopped


def test_no_stops_passes_everything_through() -> None:
    assert feed_all((), ["a", "b", "c"]) == ("abc", False)


def test_stop_inside_one_piece_cuts_there() -> None:
    assert feed_all(("\n",), ["Paris.\nQuestion"]) == ("Paris.", True)


def test_stop_split_across_pieces_is_not_leaked() -> None:
    m = StopMatcher(("\nQuestion:",))
    assert m.feed("Paris.\nQue") == ("Paris.", False)
    assert m.feed("stion: next") == ("", True)


def test_held_back_prefix_is_released_when_it_is_not_a_stop() -> None:
    m = StopMatcher(("\n\n",))
    assert m.feed("a\n") == ("a", False)
    assert m.feed("b") == ("\nb", False)


def test_flush_returns_held_text_at_end() -> None:
    m = StopMatcher(("###",))
    assert m.feed("x##") == ("x", False)
    assert m.flush() == "##"


def test_earliest_of_several_stops_wins() -> None:
    assert feed_all(("END", "\n"), ["one\ntwo END"]) == ("one", True)
