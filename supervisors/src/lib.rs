//! Erlang-style supervision for lunatic.
