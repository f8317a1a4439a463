//! The guards: CPython's own parser for the tests step, and pytest in a bubblewrap sandbox for
//! the implementation step. (Being built: issue #4.)
