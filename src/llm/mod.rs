//! Chat models: the `ChatModel` trait and its backends. (Being built: issue #4.)
