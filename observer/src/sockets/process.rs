//! Process attribution: socket inode to pid and command (being written).
