"""Pure decision core: statement analysis (sqlglot), rules, decisions. No I/O, no project imports."""
