    .text
adv_isr0:
    push 0
    push 0
    jmp adv_isr_common
adv_isr1:
    push 0
    push 1
    jmp adv_isr_common
adv_isr2:
    push 0
    push 2
    jmp adv_isr_common
adv_isr3:
    push 0
    push 3
    jmp adv_isr_common
adv_isr4:
    push 0
    push 4
    jmp adv_isr_common
adv_isr5:
    push 0
    push 5
    jmp adv_isr_common
adv_isr6:
    push 0
    push 6
    jmp adv_isr_common
adv_isr7:
    push 0
    push 7
    jmp adv_isr_common
adv_isr8:
    push 8
    jmp adv_isr_common
adv_isr9:
    push 0
    push 9
    jmp adv_isr_common
adv_isr10:
    push 10
    jmp adv_isr_common
adv_isr11:
    push 11
    jmp adv_isr_common
adv_isr12:
    push 12
    jmp adv_isr_common
adv_isr13:
    push 13
    jmp adv_isr_common
adv_isr14:
    push 14
    jmp adv_isr_common
adv_isr15:
    push 0
    push 15
    jmp adv_isr_common
adv_isr16:
    push 0
    push 16
    jmp adv_isr_common
adv_isr17:
    push 17
    jmp adv_isr_common
adv_isr18:
    push 0
    push 18
    jmp adv_isr_common
adv_isr19:
    push 0
    push 19
    jmp adv_isr_common
adv_isr20:
    push 0
    push 20
    jmp adv_isr_common
adv_isr21:
    push 21
    jmp adv_isr_common
adv_isr22:
    push 0
    push 22
    jmp adv_isr_common
adv_isr23:
    push 0
    push 23
    jmp adv_isr_common
adv_isr24:
    push 0
    push 24
    jmp adv_isr_common
adv_isr25:
    push 0
    push 25
    jmp adv_isr_common
adv_isr26:
    push 0
    push 26
    jmp adv_isr_common
adv_isr27:
    push 0
    push 27
    jmp adv_isr_common
adv_isr28:
    push 0
    push 28
    jmp adv_isr_common
adv_isr29:
    push 29
    jmp adv_isr_common
adv_isr30:
    push 30
    jmp adv_isr_common
adv_isr31:
    push 0
    push 31
    jmp adv_isr_common
    .section .rodata
    .balign 8
    .global ADV_ISR_TABLE
ADV_ISR_TABLE:
    .quad adv_isr0
    .quad adv_isr1
    .quad adv_isr2
    .quad adv_isr3
    .quad adv_isr4
    .quad adv_isr5
    .quad adv_isr6
    .quad adv_isr7
    .quad adv_isr8
    .quad adv_isr9
    .quad adv_isr10
    .quad adv_isr11
    .quad adv_isr12
    .quad adv_isr13
    .quad adv_isr14
    .quad adv_isr15
    .quad adv_isr16
    .quad adv_isr17
    .quad adv_isr18
    .quad adv_isr19
    .quad adv_isr20
    .quad adv_isr21
    .quad adv_isr22
    .quad adv_isr23
    .quad adv_isr24
    .quad adv_isr25
    .quad adv_isr26
    .quad adv_isr27
    .quad adv_isr28
    .quad adv_isr29
    .quad adv_isr30
    .quad adv_isr31
