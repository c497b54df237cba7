//! The heads stickyd sends: the upstream request head and the client response head, each
//! written from the received head's bytes into one buffer. Pure.
