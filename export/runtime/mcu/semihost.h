/* ARM semihosting output for the bare-metal demo (see startup.c). */
#ifndef BET_SEMIHOST_H
#define BET_SEMIHOST_H

void semihost_write(const char *text);
void semihost_exit(int code);

#endif /* BET_SEMIHOST_H */
